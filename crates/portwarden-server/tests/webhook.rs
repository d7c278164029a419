//! `[alerts] webhook`: alert events posted to a receiver on loopback, over HTTP and
//! HTTPS (a private CA named by `ca`), retried after a 503, dropped past the queue.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwarden_ops::ManualClock;
use portwarden_server::{App, Config};
use tokio_rustls::rustls;

/// A receiver on 127.0.0.1:0 answering `codes` in turn (then 200), keeping each body;
/// over TLS with `tls`. Bounded: 60 s, or 20 requests.
fn receiver(codes: Vec<u16>, tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Got) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while Instant::now() < until && n < 20 {
            let Ok((c, _)) = l.accept() else {
                // Real time: polling a test listener.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let code = codes.get(n).copied().unwrap_or(200);
            n += 1;
            let mut s: Box<dyn ReadWrite> = match &tls {
                Some(cfg) => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(cfg.clone()).unwrap(),
                    c,
                )),
                None => Box::new(c),
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(k) = s.read(&mut chunk) else {
                    break (String::new(), String::new());
                };
                if k == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len: usize = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_string(), b.to_string());
                    }
                }
            };
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.flush();
            // A connection that never sent a request (a failed handshake) is not one.
            if !head.is_empty() {
                got2.lock().unwrap().push((head, body));
            }
        }
    });
    (port, got)
}

/// The requests received: (head, body).
type Got = Arc<Mutex<Vec<(String, String)>>>;

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn app(tag: &str, alerts: &str) -> (portwarden_testkit::Dir, Arc<App>) {
    let dir = portwarden_testkit::tempdir(tag);
    let policy = format!("version = 1\n[host]\nname = \"mirror-7\"\n[alerts]\n{alerts}\n");
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let mut cfg = Config::new(dir.join("state"));
    cfg.policy = Some(dir.join("policy.toml"));
    let app = App::new(cfg, ManualClock::at(1_800_000_000)).unwrap();
    (dir, app)
}

fn change(raised: bool) -> portwarden_core::health::AlertChange {
    portwarden_core::health::AlertChange {
        rule: portwarden_core::findings::RuleId::PortErrorRateHigh,
        port: portwarden_core::health::PortKey {
            service: "rsync-mirror".into(),
            protocol: portwarden_core::Protocol::Tcp,
            port: 873,
        },
        raised,
        value: 0.25,
        threshold: 0.01,
    }
}

/// Runs the worker until `want` bodies have been received (bounded: 20 s).
fn deliver(app: &Arc<App>, got: &Got, want: usize) {
    deliver_until(app, || got.lock().unwrap().len() >= want);
}

/// Runs the worker until `done` holds (bounded: 20 s).
fn deliver_until(app: &Arc<App>, done: impl Fn() -> bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = rt.spawn(portwarden_server::webhook::run(app.clone(), rx));
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < until, "not delivered in time");
        // Real time: the worker posts on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    tx.send(true).unwrap();
    rt.block_on(worker).unwrap();
}

#[test]
fn alert_events_are_posted_in_order_and_a_503_is_retried() {
    let (port, got) = receiver(vec![503], None);
    let (_d, app) = app(
        "hook-http",
        &format!("webhook = \"http://127.0.0.1:{port}/hooks/pw?team=mirrors\"\nretries = 2"),
    );
    app.alert(&change(true), 1_800_000_010);
    app.alert(&change(false), 1_800_000_400);
    deliver(&app, &got, 3);
    let got = got.lock().unwrap();
    assert!(
        got[0]
            .0
            .starts_with("POST /hooks/pw?team=mirrors HTTP/1.1\r\n"),
        "{got:?}"
    );
    assert!(
        got[0].0.contains("Content-Type: application/json"),
        "{got:?}"
    );
    assert_eq!(
        got[0].1, got[1].1,
        "the event refused with 503 is sent again"
    );
    let ev: Vec<serde_json::Value> = got[1..]
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(ev[0]["kind"], "alert.raise");
    assert_eq!(ev[1]["kind"], "alert.clear");
    assert_eq!(
        (
            ev[0]["host"].as_str(),
            ev[0]["rule"].as_str(),
            ev[0]["severity"].as_str(),
            ev[0]["port"].as_u64(),
            ev[0]["at"].as_i64()
        ),
        (
            Some("mirror-7"),
            Some("port-error-rate-high"),
            Some("high"),
            Some(873),
            Some(1_800_000_010)
        )
    );
    assert!(
        ev[0]["summary"].as_str().unwrap().contains("25.0 %"),
        "{}",
        ev[0]
    );
    let s = &app.outbox.stats;
    assert_eq!(
        [&s.delivered, &s.retried, &s.failed, &s.dropped].map(|a| a.load(Ordering::Relaxed)),
        [2, 1, 0, 0]
    );
}

#[test]
fn a_refusing_receiver_is_not_retried_and_a_full_queue_drops() {
    let (port, got) = receiver(vec![400], None);
    let (_d, app) = app(
        "hook-drop",
        &format!("webhook = \"http://127.0.0.1:{port}/\"\nqueue = 2"),
    );
    for _ in 0..5 {
        app.alert(&change(true), 1);
    }
    assert_eq!(app.outbox.waiting(), 2);
    deliver(&app, &got, 2);
    let s = &app.outbox.stats;
    assert_eq!(
        [&s.delivered, &s.retried, &s.failed, &s.dropped].map(|a| a.load(Ordering::Relaxed)),
        [1, 0, 1, 3],
        "the 400 is given up at once; three found the queue full"
    );
}

#[test]
fn https_to_a_private_ca_named_by_the_policy() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let (port, got) = receiver(vec![], Some(Arc::new(cfg)));
    let dir = portwarden_testkit::tempdir("hook-ca");
    std::fs::write(dir.join("ca.pem"), ck.cert.pem()).unwrap();
    let ca = dir.join("ca.pem").display().to_string();
    // Without the CA the handshake fails (and is retried); with it the event arrives.
    let (_d, without) = app(
        "hook-noca",
        &format!("webhook = \"https://localhost:{port}/\"\nretries = 0"),
    );
    without.alert(&change(true), 1);
    let (_d2, with) = app(
        "hook-tls",
        &format!("webhook = \"https://localhost:{port}/\"\nca = \"{ca}\""),
    );
    with.alert(&change(true), 2);
    // The trust anchors are the ones read when the policy was loaded: a `ca` file changed
    // since changes nothing until a SIGHUP loads it.
    std::fs::write(dir.join("ca.pem"), "hello\n").unwrap();
    deliver_until(&without, || {
        without.outbox.stats.failed.load(Ordering::Relaxed) == 1
    });
    assert_eq!(
        without.outbox.stats.delivered.load(Ordering::Relaxed),
        0,
        "the untrusted certificate was accepted"
    );
    assert!(got.lock().unwrap().is_empty());
    deliver(&with, &got, 1);
    let got = got.lock().unwrap();
    let ev: serde_json::Value = serde_json::from_str(&got.last().unwrap().1).unwrap();
    assert_eq!(ev["at"], 2);
    assert_eq!(with.outbox.stats.delivered.load(Ordering::Relaxed), 1);
}

#[test]
fn a_ca_that_cannot_be_used_refuses_the_policy_at_start_and_on_sighup() {
    let dir = portwarden_testkit::tempdir("hook-badca");
    std::fs::write(dir.join("not.pem"), "hello\n").unwrap();
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    let policy = |ca: &str| {
        format!("version = 1\n[alerts]\nwebhook = \"https://localhost:1/\"\nca = \"{ca}\"\n")
    };
    let mut cfg = Config::new(dir.join("state"));
    cfg.policy = Some(dir.join("policy.toml"));
    for (ca, why) in [
        ("missing.pem", "cannot read [alerts] ca"),
        ("/dev/zero", "cannot read [alerts] ca"),
        ("a-dir", "cannot read [alerts] ca"),
        ("not.pem", "no certificate in it"),
    ] {
        std::fs::write(dir.join("policy.toml"), policy(ca)).unwrap();
        let Err(e) = App::new(cfg.clone(), ManualClock::at(1)) else {
            panic!("{ca}: the policy was taken");
        };
        assert!(format!("{e:#}").contains(why), "{ca}: {e:#}");
    }
    // A relative `ca` is beside the policy file, wherever the daemon runs.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("policy.toml"), policy("ca.pem")).unwrap();
    let app = App::new(cfg, ManualClock::at(1)).unwrap();
    std::fs::write(dir.join("policy.toml"), policy("not.pem")).unwrap();
    let e = app.reload().expect_err("a bad ca on SIGHUP");
    assert!(format!("{e:#}").contains("no certificate in it"), "{e:#}");
    let kept = app.policy().policy.alerts.webhook.clone().unwrap();
    assert_eq!(kept.ca.as_deref(), Some(dir.join("ca.pem").as_path()));
}

#[test]
fn a_stop_does_not_wait_for_a_receiver_that_never_answers() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (_d, app) = app(
        "hook-hang",
        &format!("webhook = \"http://127.0.0.1:{port}/\"\ntimeout = \"60s\""),
    );
    app.alert(&change(true), 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = rt.spawn(portwarden_server::webhook::run(app.clone(), rx));
    // The attempt is under way once the connection is accepted (it is never answered).
    let (_held, _) = l.accept().unwrap();
    let t0 = Instant::now();
    tx.send(true).unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), worker).await })
        .expect("the worker waited for the 60 s attempt")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 0);
}
