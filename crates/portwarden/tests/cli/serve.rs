//! `portwarden serve` over real HTTP on 127.0.0.1:0: auth and roles on every endpoint,
//! the ledger's actor, SIGHUP, `/metrics` through promtool, and hostile clients.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLICY: &str = r#"
version = 1
[[pool]]
name = "mirrors"
range = "21100-21199"
lease_ttl = "1h"
[[service]]
name = "rsync-mirror"
pool = "mirrors"
zone = "localhost"
"#;

/// A daemon this test started; stopped by its pid (SIGTERM, then SIGKILL) on drop.
pub(super) struct Daemon {
    child: std::process::Child,
    pub(super) addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    pub(super) dir: portwarden_testkit::Dir,
    pub(super) read: String,
    pub(super) operate: String,
    pub(super) admin: String,
}

fn token(state: &str, name: &str, role: &str) -> String {
    let o = run(&[
        "--state-dir",
        state,
        "token",
        "create",
        name,
        "--role",
        role,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

impl Daemon {
    fn start(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_with(tag, POLICY, extra)
    }

    /// A daemon on `policy`, with a read, an operate and an admin token.
    pub(super) fn start_with(tag: &str, policy: &str, extra: &[&str]) -> Daemon {
        let dir = tempdir(tag);
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        let state = dir.join("state").display().to_string();
        let (read, operate, admin) = (
            token(&state, "reader", "read"),
            token(&state, "ci", "operate"),
            token(&state, "boss", "admin"),
        );
        let policy = dir.join("policy.toml").display().to_string();
        let mut child = bin()
            .args(["--state-dir", &state, "--policy", &policy, "serve"])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--interval",
                "1s",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" && v["kind"] == "api" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the daemon never said where it listens: {:?}",
                    log.lock().unwrap()
                )
            })
            .parse()
            .unwrap();
        Daemon {
            child,
            addr,
            log,
            dir,
            read,
            operate,
            admin,
        }
    }

    fn state(&self) -> String {
        self.dir.join("state").display().to_string()
    }

    pub(super) fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http(self.addr, method, path, token, body)
    }

    fn json(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, Value) {
        let (st, b) = self.req(method, path, Some(token), body);
        let v = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path}: {e}: {b}"));
        (st, v)
    }

    pub(super) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of the child this test spawned.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn ledger(&self) -> Vec<Value> {
        let o = run(&["--state-dir", &self.state(), "--json", "log"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["records"].as_array().unwrap().clone()
    }

    fn head(&self) -> Value {
        let o = run(&["--state-dir", &self.state(), "--json", "log", "head"]);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["head"].clone()
    }

    /// Waits (bounded) for a log line whose message contains `text`.
    fn wait_log(&self, text: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            });
            if let Some(v) = found {
                return v;
            }
            assert!(
                Instant::now() < until,
                "no log line with {text:?}: {:?}",
                self.log.lock().unwrap()
            );
            // Real time: the daemon logs on its own threads.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for a ledger record of `action`.
    fn wait_record(&self, action: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = self.ledger().into_iter().find(|r| r["action"] == action) {
                return r;
            }
            assert!(
                Instant::now() < until,
                "no {action} record: {:?}",
                self.log.lock().unwrap()
            );
            // Real time: the daemon handles the signal on its own thread.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // Real time: the daemon drains its connections before it exits.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection: (status, body).
pub(super) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    head += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    // Read the head, then Content-Length bytes when the server gives it (chromedriver
    // keeps the connection open whatever `Connection: close` says); else to EOF.
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if len.is_some_and(|len| out.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Writes `request` as it is on a new connection and reads the answer to EOF (bounded).
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Each endpoint, the role it needs, and a request the role can make without touching
/// the host's firewall (a refused body past auth is fine: it shows auth let it in).
const ENDPOINTS: &[(&str, &str, &str, Option<&str>)] = &[
    ("GET", "/api/v1/health", "read", None),
    ("GET", "/api/v1/check", "read", None),
    ("GET", "/api/v1/sockets?listen=true", "read", None),
    ("GET", "/api/v1/leases", "read", None),
    (
        "POST",
        "/api/v1/leases",
        "operate",
        Some(r#"{"service":"rsync-mirror","ttl":"10m"}"#),
    ),
    (
        "POST",
        "/api/v1/leases/reclaim?dry_run=true",
        "operate",
        None,
    ),
    ("POST", "/api/v1/leases/999999/renew", "operate", Some("{}")),
    (
        "POST",
        "/api/v1/leases/999999/release",
        "operate",
        Some("{}"),
    ),
    ("GET", "/api/v1/pools", "read", None),
    ("GET", "/api/v1/scans", "read", None),
    ("GET", "/api/v1/scans/77", "read", None),
    (
        "POST",
        "/api/v1/scans",
        "operate",
        Some(r#"{"targets":["127.0.0.1"],"top":0}"#),
    ),
    ("GET", "/api/v1/ports", "read", None),
    ("GET", "/api/v1/fw/plan", "read", None),
    ("GET", "/api/v1/fw/grants", "read", None),
    (
        "POST",
        "/api/v1/fw/apply",
        "operate",
        Some(r#"{"confirm_within":"not-a-duration"}"#),
    ),
    ("POST", "/api/v1/fw/confirm", "operate", None),
    ("POST", "/api/v1/fw/rollback", "operate", None),
    (
        "POST",
        "/api/v1/fw/grants",
        "operate",
        Some(r#"{"port":"70000","from":"127.0.0.1","for":"1h"}"#),
    ),
    (
        "DELETE",
        "/api/v1/fw/grants",
        "operate",
        Some(r#"{"port":"nope","from":"127.0.0.1"}"#),
    ),
    ("GET", "/api/v1/policy/history", "read", None),
    ("GET", "/api/v1/changes", "read", None),
    ("GET", "/api/v1/changes/999999", "read", None),
    (
        "POST",
        "/api/v1/changes",
        "operate",
        Some(r#"{"policy":"version = 0","reason":"x"}"#),
    ),
    ("POST", "/api/v1/changes/999999/approve", "operate", None),
    (
        "POST",
        "/api/v1/changes/999999/reject",
        "operate",
        Some(r#"{"reason":"no"}"#),
    ),
    (
        "POST",
        "/api/v1/changes/999999/apply",
        "operate",
        Some("{}"),
    ),
    ("GET", "/api/v1/ledger", "read", None),
    ("GET", "/api/v1/ledger/head", "read", None),
    ("GET", "/api/v1/ledger/verify", "read", None),
    ("GET", "/api/v1/report?format=md", "read", None),
    ("GET", "/api/v1/tokens", "admin", None),
    (
        "POST",
        "/api/v1/tokens",
        "admin",
        Some(r#"{"name":"made-by-api","role":"read"}"#),
    ),
    ("DELETE", "/api/v1/tokens/nobody", "admin", None),
    ("GET", "/metrics", "read", None),
];

#[test]
fn every_endpoint_answers_401_without_a_token_403_below_its_role_and_serves_its_role() {
    let d = Daemon::start("serve-auth", &[]);
    let rank = |r: &str| {
        ["read", "operate", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (method, path, need, body) in ENDPOINTS {
        let (st, b) = d.req(method, path, None, *body);
        assert_eq!(st, 401, "{method} {path} without a token: {b}");
        let e: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(e["error"], "unauthorized", "{b}");
        for (role, tok) in [
            ("read", &d.read),
            ("operate", &d.operate),
            ("admin", &d.admin),
        ] {
            let (st, b) = d.req(method, path, Some(tok), *body);
            if rank(role) < rank(need) {
                assert_eq!(st, 403, "{method} {path} as {role}: {b}");
                let e: Value = serde_json::from_str(&b).unwrap();
                assert_eq!(e["error"], "forbidden");
            } else {
                assert!(
                    !matches!(st, 401 | 403 | 500),
                    "{method} {path} as {role}: {st} {b}"
                );
            }
        }
    }
    // The reads are their documents, as the CLI prints them.
    let (st, v) = d.json("GET", "/api/v1/leases", &d.read, None);
    assert_eq!((st, v["api"].as_u64()), (200, Some(1)), "{v}");
    assert!(!v["leases"].as_array().unwrap().is_empty());
    let (st, v) = d.json("GET", "/api/v1/health", &d.read, None);
    assert_eq!(st, 200);
    assert!(
        v["policy"].as_str().unwrap().ends_with("policy.toml"),
        "{v}"
    );
    // The token made through the API works, and revoking it ends it.
    let made = d.ledger();
    assert!(made.iter().any(|r| r["action"] == "token.create"
        && r["subject"] == "token:made-by-api"
        && r["actor"] == "token:boss"));
}

/// Polls a scan until it is no longer running (bounded).
fn scan_result(d: &Daemon, id: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = d.json("GET", &format!("/api/v1/scans/{id}"), &d.read, None);
        assert_eq!(st, 200, "{v}");
        if v["state"] != "running" {
            return v;
        }
        assert!(Instant::now() < until, "scan {id} still runs: {v}");
        // Real time: the scan runs in the daemon.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_scan_of_an_allowed_target_runs_and_is_polled_others_are_refused() {
    let d = Daemon::start("serve-scans", &[]);
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let body = format!(r#"{{"targets":["localhost"],"ports":"{port},{closed}"}}"#);
    let (st, v) = d.json("POST", "/api/v1/scans", &d.operate, Some(&body));
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["actor"].as_str()),
        (Some("running"), Some("token:ci")),
        "{v}"
    );
    assert_eq!(
        v["targets"],
        serde_json::json!(["127.0.0.1"]),
        "the name is resolved at once: {v}"
    );
    let id = v["id"].as_u64().unwrap();
    let done = scan_result(&d, id);
    assert_eq!(done["state"], "done", "{done}");
    let ports: Vec<u64> = done["result"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "open")
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [u64::from(port)], "{done}");
    assert_eq!(done["result"]["ports_scanned"], 2);
    let start = d.wait_record("scan.start");
    assert_eq!(start["actor"], "token:ci", "{start}");
    assert_eq!(start["subject"], format!("scan:{id}"));
    // The list holds it, without the result.
    let (_, l) = d.json("GET", "/api/v1/scans", &d.read, None);
    assert_eq!(l["scans"][0]["id"], id);
    assert!(l["scans"][0].get("result").is_none(), "{l}");

    // Outside the policy's [scan] targets (loopback by default), or too many: 403, and
    // nothing is recorded.
    let before = d.ledger().len();
    for (targets, why) in [
        (r#"["10.9.9.9"]"#, "not within the policy's [scan] targets"),
        (
            r#"["127.0.0.1","10.0.0.0/30"]"#,
            "not within the policy's [scan] targets",
        ),
        (r#"["127.0.0.0/16"]"#, "max_hosts 256"),
    ] {
        let (st, v) = d.json(
            "POST",
            "/api/v1/scans",
            &d.operate,
            Some(&format!(r#"{{"targets":{targets},"ports":"22"}}"#)),
        );
        assert_eq!(st, 403, "{targets}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(why),
            "{targets}: {v}"
        );
    }
    for bad in [
        r#"{"targets":["127.0.0.1"],"ports":"22-x"}"#,
        r#"{"targets":["127.0.0.1"],"timeout":"1h"}"#,
        r#"{"targets":["127.0.0.1"],"rate":0}"#,
        r#"{"targets":[]}"#,
        r#"{"targets":["127.0.0.1"],"syn":true}"#,
    ] {
        let (st, v) = d.json("POST", "/api/v1/scans", &d.operate, Some(bad));
        assert!(matches!(st, 400 | 422), "{bad}: {st} {v}");
    }
    assert_eq!(d.ledger().len(), before, "a refused scan records nothing");
    for id in ["../1", "1%2F..", "-1", "99999999999999999999"] {
        let (st, _) = d.req("GET", &format!("/api/v1/scans/{id}"), Some(&d.read), None);
        assert!(matches!(st, 400 | 404), "{id}: {st}");
    }

    // One at a time: a long scan runs, a second is 409 naming it; it shows progress.
    let (st, long) = d.json(
        "POST",
        "/api/v1/scans",
        &d.operate,
        Some(r#"{"targets":["127.0.0.1"],"ports":"1-65535","rate":200}"#),
    );
    assert_eq!(st, 202, "{long}");
    let (st, v) = d.json("POST", "/api/v1/scans", &d.operate, Some(&body));
    assert_eq!(st, 409, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("scan {} is running", long["id"])),
        "{v}"
    );
    // 65,535 ports at 200 a second: minutes. Its progress shows while it runs.
    let until = Instant::now() + Duration::from_secs(20);
    let path = format!("/api/v1/scans/{}", long["id"]);
    loop {
        let (_, v) = d.json("GET", &path, &d.read, None);
        assert_eq!(v["state"], "running", "{v}");
        if v["total"] == 65535 && v["done"].as_u64().unwrap() > 0 {
            assert!(v["done"].as_u64().unwrap() < 65535, "{v}");
            break;
        }
        assert!(Instant::now() < until, "no progress: {v}");
        // Real time: the scan runs on its own.
        std::thread::sleep(Duration::from_millis(100));
    }
    // A stop interrupts it at once and says so (the daemon then ends its jobs' runs: the
    // drop waits for that).
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let line = d.wait_log("scan interrupted");
    assert_eq!(line["scan"], long["id"], "{line}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(open);
}

#[test]
fn mutations_are_recorded_with_the_tokens_name_as_actor() {
    let d = Daemon::start("serve-actor", &[]);
    let (st, v) = d.json(
        "POST",
        "/api/v1/leases",
        &d.operate,
        Some(r#"{"service":"rsync-mirror"}"#),
    );
    assert_eq!(st, 200, "{v}");
    let lease = &v["leases"][0];
    assert_eq!(
        lease["owner"], "ci",
        "the owner defaults to the token's name: {v}"
    );
    let id = lease["id"].as_i64().unwrap();
    let alloc = d.wait_record("lease.alloc");
    assert_eq!(alloc["actor"], "token:ci", "{alloc}");
    // Another token cannot release ci's lease by default owner; ci can.
    let (st, v) = d.json(
        "POST",
        &format!("/api/v1/leases/{id}/release"),
        &d.admin,
        Some("{}"),
    );
    assert_eq!(st, 403, "{v}");
    let (st, v) = d.json(
        "POST",
        &format!("/api/v1/leases/{id}/release"),
        &d.operate,
        None,
    );
    assert_eq!(st, 200, "{v}");
    let rel = d.wait_record("lease.release");
    assert_eq!(rel["actor"], "token:ci");
    // A token revoked by the CLI is refused by the running daemon at once.
    let (st, _) = d.req("GET", "/api/v1/leases", Some(&d.read), None);
    assert_eq!(st, 200);
    let o = run(&["--state-dir", &d.state(), "token", "revoke", "reader"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (st, _) = d.req("GET", "/api/v1/leases", Some(&d.read), None);
    assert_eq!(st, 401, "a revoked token opens nothing");
}

#[test]
fn sighup_with_a_bad_policy_keeps_the_old_one_and_a_good_one_replaces_it() {
    let d = Daemon::start("serve-hup", &[]);
    let policy = d.dir.join("policy.toml");
    std::fs::write(&policy, "version = 1\n[[service]]\nname = \n").unwrap();
    d.signal(libc::SIGHUP);
    let r = d.wait_record("policy.reload-refused");
    assert!(
        r["reason"].as_str().unwrap().contains("policy.toml:3:"),
        "{r}"
    );
    // Still serving under the old one: its service allocates.
    let (st, v) = d.json(
        "POST",
        "/api/v1/leases",
        &d.operate,
        Some(r#"{"service":"rsync-mirror"}"#),
    );
    assert_eq!(st, 200, "{v}");
    std::fs::write(&policy, POLICY.replace("rsync-mirror", "http-mirror")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_record("policy.reload");
    // The same file again is no change: logged, not recorded.
    d.signal(libc::SIGHUP);
    d.wait_log("the policy is unchanged");
    let reloads = |d: &Daemon| {
        d.ledger()
            .iter()
            .filter(|r| r["action"] == "policy.reload")
            .count()
    };
    assert_eq!(reloads(&d), 1);
    let (st, v) = d.json(
        "POST",
        "/api/v1/leases",
        &d.operate,
        Some(r#"{"service":"http-mirror"}"#),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = d.json(
        "POST",
        "/api/v1/leases",
        &d.operate,
        Some(r#"{"service":"rsync-mirror"}"#),
    );
    assert_eq!(st, 422, "the old service is gone: {v}");
}

#[test]
fn a_live_scrape_passes_promtool_and_carries_the_ledger_head() {
    let d = Daemon::start("serve-metrics", &[]);
    let (st, _) = d.json(
        "POST",
        "/api/v1/leases",
        &d.operate,
        Some(r#"{"service":"rsync-mirror"}"#),
    );
    assert_eq!(st, 200);
    let (st, text) = d.req("GET", "/metrics", Some(&d.read), None);
    assert_eq!(st, 200, "{text}");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    let head = d.head();
    assert!(
        text.contains(&format!("portwarden_ledger_head_seq {}", head["seq"])),
        "{head} {text}"
    );
    assert!(text.contains(&format!("hash=\"{}\"", head["hash"].as_str().unwrap())));
    assert!(
        text.contains("portwarden_pool_leased_ports{pool=\"mirrors\",protocol=\"tcp\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("source=\"lease\""),
        "the leased port is sampled: {text}"
    );
}

#[test]
fn hostile_requests_get_json_4xx_and_change_nothing() {
    let d = Daemon::start(
        "serve-bad",
        &["--header-timeout", "1s", "--max-connections", "40"],
    );
    let before = d.head();
    let tok = d.operate.clone();
    let big = format!(r#"{{"service":"{}"}}"#, "x".repeat(100 << 10));
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/api/v1/leases", Some("{not json"), 400),
        (
            "POST",
            "/api/v1/leases",
            Some(r#"{"service":"rsync-mirror","port":1,"evil":true}"#),
            400,
        ),
        ("POST", "/api/v1/leases", Some(r#"{"service":7}"#), 400),
        ("POST", "/api/v1/leases", Some(&big), 413),
        (
            "POST",
            "/api/v1/leases",
            Some(r#"{"service":"rsync-mirror","owner":"a\u0007b"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/leases",
            Some(r#"{"service":"rsync-mirror","count":100000}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/leases/..%2F..%2Fetc%2Fpasswd/renew",
            Some("{}"),
            400,
        ),
        ("POST", "/api/v1/leases/1;DROP/release", Some("{}"), 400),
        ("GET", "/api/v1/../../etc/passwd", None, 404),
        ("GET", "/api/v1/leases?evil=1", None, 400),
        ("DELETE", "/api/v1/leases", None, 405),
        ("GET", "/api/v1/nothing-here", None, 404),
        ("GET", "/api/v1/report?format=exe", None, 400),
        ("GET", "/api/v1/ledger?since=-5s", None, 400),
    ];
    for (method, path, body, want) in cases {
        let (st, b) = d.req(method, path, Some(&tok), *body);
        assert_eq!(st, *want, "{method} {path}: {b}");
        let e: Value =
            serde_json::from_str(&b).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {b}"));
        assert_eq!(e["api"], 1);
        assert!(e["error"].is_string() && e["detail"].is_string(), "{e}");
    }
    let admin = d.admin.clone();
    let (st, b) = d.req(
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(r#"{"name":"../x","role":"admin"}"#),
    );
    assert_eq!(st, 400, "{b}");
    let (st, b) = d.req(
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(r#"{"name":"x","role":"root"}"#),
    );
    assert_eq!(st, 400, "{b}");
    // Two Authorization headers: which one counts is not guessed.
    let said = raw(
        d.addr,
        &format!(
            "GET /api/v1/leases HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nAuthorization: Bearer {}\r\n\r\n",
            d.read, d.admin
        ),
    );
    assert!(said.starts_with("HTTP/1.1 400"), "{said}");
    // Without a token no path says whether it exists.
    for p in [
        "/api/v1/nothing-here",
        "/nothing",
        "/api/v1/../../etc/passwd",
    ] {
        assert_eq!(d.req("GET", p, None, None).0, 401, "{p}");
    }
    // A body that never arrives: 408 once the header timeout has passed, not held.
    let t0 = Instant::now();
    let said = raw(
        d.addr,
        &format!(
            "POST /api/v1/leases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\
             Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"serv"
        ),
    );
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    // Slowloris: a client that never finishes its headers is closed after the timeout.
    let mut slow = TcpStream::connect(d.addr).unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the slow client was kept {:?}",
        t0.elapsed()
    );
    let said = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || said.starts_with("HTTP/1.1 408"), "{said}");
    // A flood of idle connections past the limit: the extra ones are closed at once and
    // the daemon goes on serving once the idle ones time out.
    let mut idle: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(d.addr).ok())
        .collect();
    assert!(idle.len() >= 40);
    // One address holds at most a quarter of --max-connections (10 of 40); the rest are
    // told why, not reset.
    let mut busy = String::new();
    let extra = idle.last_mut().unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.read_to_string(&mut busy);
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("\"error\":\"busy\""), "{busy}");
    // Another address is served meanwhile.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    other.connect(&d.addr.into()).unwrap();
    let mut other: TcpStream = other.into();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        other,
        "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        d.read
    )
    .unwrap();
    let mut said = String::new();
    let _ = other.read_to_string(&mut said);
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = std::panic::catch_unwind(|| {
            d.req("GET", "/api/v1/health", Some(&d.read), None).0 == 200
        });
        if ok.unwrap_or(false) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the daemon stopped serving after an idle flood"
        );
        // Real time: idle connections are closed by the header timeout.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
    assert_eq!(d.head(), before, "nothing was recorded");
}

#[test]
fn failed_authentication_is_rate_limited_per_source() {
    let d = Daemon::start("serve-rate", &[]);
    for i in 0..10 {
        let (st, _) = d.req("GET", "/api/v1/leases", Some(&format!("pwt_{i:064}")), None);
        assert_eq!(st, 401);
    }
    let (st, b) = d.req("GET", "/api/v1/leases", Some("pwt_guess"), None);
    assert_eq!(st, 429, "{b}");
    // A good token from the same source waits too: guessing cannot go on beside it.
    let (st, _) = d.req("GET", "/api/v1/leases", Some(&d.read), None);
    assert_eq!(st, 429);
}

#[test]
fn token_create_prints_the_secret_once_and_list_never_does() {
    let dir = tempdir("token-cli");
    let state = dir.join("state").display().to_string();
    let o = run(&[
        "--state-dir",
        &state,
        "--json",
        "token",
        "create",
        "ci",
        "--role",
        "operate",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = assert_schema("token", &o.stdout);
    let secret = v["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pwt_"));
    let o = run(&[
        "--state-dir",
        &state,
        "token",
        "create",
        "ci",
        "--role",
        "read",
    ]);
    assert_eq!(code(&o), 2, "a taken name is refused: {}", stderr(&o));
    let o = run(&[
        "--state-dir",
        &state,
        "token",
        "create",
        "bad name",
        "--role",
        "read",
    ]);
    assert_ne!(code(&o), 0);
    let o = run(&["--state-dir", &state, "--json", "token", "list"]);
    let list = assert_schema("tokens", &o.stdout);
    assert_eq!(list["tokens"][0]["role"], "operate");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret));
    let db = std::fs::read(dir.join("state/portwarden.db")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored"
    );
    let o = run(&["--state-dir", &state, "--json", "token", "revoke", "ci"]);
    assert_eq!(code(&o), 0);
    assert_schema("token-revoke", &o.stdout);
    let o = run(&["--state-dir", &state, "token", "revoke", "ci"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn the_systemd_unit_verifies_and_its_command_line_parses() {
    let unit = std::fs::read_to_string(root().join("dist/portwarden.service")).unwrap();
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "StateDirectory=portwarden",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit lacks `{key}`");
    }
    // systemd-analyze checks that ExecStart's binary exists: point it at the built one.
    let exe = env!("CARGO_BIN_EXE_portwarden");
    let dir = tempdir("unit");
    let path = dir.join("portwarden.service");
    std::fs::write(&path, unit.replace("/usr/bin/portwarden", exe)).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    // An unknown key or a bad value is only a warning to systemd: any word is a failure.
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    // Every argument ExecStart passes is one `serve` takes (clap checks each value as it
    // meets it, before --help).
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/portwarden "))
        .expect("ExecStart runs /usr/bin/portwarden");
    let mut args: Vec<&str> = exec.split_whitespace().collect();
    args.push("--help");
    let o = run(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut bad = args.clone();
    bad.insert(bad.len() - 1, "--no-such-flag");
    assert_eq!(code(&run(&bad)), 2, "the check itself can fail");
}

#[test]
fn a_change_is_requested_and_reviewed_over_the_api_by_token_names() {
    let d = Daemon::start("serve-change", &[]);
    let proposed = format!("{POLICY}\n# proposed over the API\n");
    let body = serde_json::json!({"policy": proposed, "reason": "a comment", "ticket": "OPS-9"});
    let (st, c) = d.json(
        "POST",
        "/api/v1/changes",
        &d.operate,
        Some(&body.to_string()),
    );
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        (c["state"].as_str(), c["requester"].as_str()),
        (Some("requested"), Some("token:ci")),
        "{c}"
    );
    let id = c["id"].as_i64().unwrap();
    // The requester's own token cannot approve it; another token can.
    let path = format!("/api/v1/changes/{id}/approve");
    let (st, e) = d.json("POST", &path, &d.operate, None);
    assert_eq!(st, 409, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("another actor"),
        "{e}"
    );
    let (st, c) = d.json("POST", &path, &d.admin, None);
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["approvals"], serde_json::json!(["token:boss"]), "{c}");
    let (_, l) = d.json("GET", "/api/v1/changes", &d.read, None);
    assert_eq!(l["changes"][0]["state"], "approved", "{l}");
    let (_, one) = d.json("GET", &format!("/api/v1/changes/{id}"), &d.read, None);
    assert!(
        one["preflight"]["diff"]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "+ # proposed over the API"),
        "{one}"
    );
    // An invalid policy is refused with its diagnostics; nothing is recorded.
    let before = d.ledger().len();
    let (st, e) = d.json(
        "POST",
        "/api/v1/changes",
        &d.operate,
        Some(r#"{"policy":"version = 1\n[[service]]\nname = 7\n","reason":"bad"}"#),
    );
    assert_eq!(st, 422, "{e}");
    assert_eq!(d.ledger().len(), before);
    let (st, h) = d.json("GET", "/api/v1/policy/history", &d.read, None);
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["adoptions"][0]["how"], "serve", "{h}");
}
