//! The daemon's jobs and scrape, driven on a manual clock: no sleeping, no sockets of
//! its own beyond the host's socket dump.

use std::collections::BTreeSet;
use std::sync::Arc;

use portwarden_ops::ManualClock;
use portwarden_server::jobs::{Job, run_once};
use portwarden_server::metrics::names;
use portwarden_server::{App, Config};

const POLICY: &str = r#"
version = 1
[[pool]]
name = "mirrors"
range = "21300-21399"
lease_ttl = "1d"
reclaim_idle = "10m"
[[service]]
name = "rsync-mirror"
pool = "mirrors"
zone = "localhost"
"#;

fn app(tag: &str) -> (portwarden_testkit::Dir, Arc<ManualClock>, Arc<App>) {
    let dir = portwarden_testkit::tempdir(tag);
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let mut cfg = Config::new(dir.join("state"));
    cfg.policy = Some(dir.join("policy.toml"));
    let clock = ManualClock::at(1_800_000_000);
    let app = App::new(cfg, clock.clone()).unwrap();
    (dir, clock, app)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_reclaim_job_retires_an_idle_lease_and_the_pool_shows_it() {
    let (_dir, clock, app) = app("srv-reclaim");
    let rt = rt();
    let ctx = app.ctx("token:ci");
    let req = portwarden_ops::lease::AllocReq {
        service: "rsync-mirror".into(),
        pool: None,
        port: None,
        count: 1,
        ttl: None,
        owner: "ci".into(),
        seed: Some(7),
        bind_probe: false,
    };
    let a = rt
        .block_on(portwarden_ops::lease::alloc(
            &ctx,
            None,
            app.state_dir(),
            &req,
            &mut |_| Ok(()),
        ))
        .unwrap();
    assert_eq!(a.leases.len(), 1);
    let leased = |app: &Arc<App>| {
        rt.block_on(portwarden_ops::lease::pools(
            &app.ctx("t"),
            None,
            app.state_dir(),
        ))
        .unwrap()
        .pools[0]
            .leased
    };
    assert_eq!(leased(&app), 1);
    // Not idle long enough yet: sampled (missed) but kept, however often the job runs.
    for _ in 0..5 {
        run_once(&app, Job::Reclaim, rt.handle()).unwrap();
        clock.advance(60);
    }
    assert_eq!(leased(&app), 1, "five minutes idle of ten: kept");
    // Past the idle time, with enough missed samples: retired by the job.
    clock.advance(6 * 60);
    run_once(&app, Job::Reclaim, rt.handle()).unwrap();
    assert_eq!(leased(&app), 0, "idle over ten minutes: reclaimed");
    let log = portwarden_ops::log::list(&app.ctx("t"), app.state_dir(), None).unwrap();
    let last = log.records.last().unwrap();
    assert!(last.action.starts_with("lease."), "{last:?}");
    assert!(last.actor.contains("reclaim job"), "{last:?}");
    let jobs = app.jobs.docs();
    let j = jobs.iter().find(|j| j.name == "reclaim").unwrap();
    assert_eq!(j.last_run, Some(1_800_000_000 + 11 * 60));
    assert!(j.last_error.is_none());
}

#[test]
fn a_scrape_exposes_exactly_the_named_families_with_their_labels() {
    let (_dir, _clock, app) = app("srv-scrape");
    let rt = rt();
    run_once(&app, Job::Inventory, rt.handle()).unwrap();
    let app2 = app.clone();
    let text = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || portwarden_server::metrics::scrape(&app2)).await
        })
        .unwrap()
        .unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let d = names::ALL
                .iter()
                .find(|d| d.name == name)
                .unwrap_or_else(|| panic!("`{name}` is not in names::ALL"));
            assert_eq!(d.kind, kind, "{name}");
            typed.insert(name.to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let d = names::ALL
                .iter()
                .find(|d| {
                    d.name == name || (d.kind == "counter" && format!("{}_total", d.name) == name)
                })
                .unwrap_or_else(|| panic!("`{name}` is not in names::ALL"));
            let labels: Vec<&str> = line
                .split_once('{')
                .map(|(_, l)| l.split_once('}').unwrap().0)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.split(',')
                        .map(|kv| kv.split_once('=').unwrap().0)
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(labels, d.labels, "{line}");
        }
    }
    let all: BTreeSet<String> = names::ALL.iter().map(|d| d.name.to_string()).collect();
    assert_eq!(typed, all, "every named family is exposed, and no other");
    for d in names::ALL {
        assert!(d.name.starts_with("portwarden_"), "{}", d.name);
    }
    // The pool's row is there with its size.
    let size = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"portwarden_pool_size_ports{pool="mirrors",protocol="tcp"} "#)
        })
        .unwrap_or_else(|| panic!("no size row for the pool: {text}"));
    assert_eq!(size.parse::<f64>().unwrap(), 100.0);
}

/// A listener with a backlog of one that accepts only when told: its accept queue fills
/// and further connects (the probes) are dropped by the kernel.
struct Stalled {
    l: std::net::TcpListener,
    held: Vec<std::net::TcpStream>,
}

impl Stalled {
    fn new() -> Stalled {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) again on our own listening socket only resizes its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
        Stalled {
            l,
            held: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.l.local_addr().unwrap().port()
    }

    /// Fills the accept queue (backlog + 1 connections).
    fn fill(&mut self) {
        let a = self.l.local_addr().unwrap();
        for _ in 0..2 {
            self.held.push(
                std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                    .unwrap(),
            );
        }
    }

    /// Accepts everything from now on, in a thread of its own, until `stop` is set (at
    /// most `secs` seconds).
    fn drain(
        self,
        secs: u64,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        use std::os::fd::AsRawFd;
        let Stalled { l, held } = self;
        drop(held);
        // The operator's fix: a real backlog, so the probes' connects all fit.
        // SAFETY: listen(2) again on our own listening socket only resizes its backlog.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 128) }, 0);
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < until
                && !stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                match l.accept() {
                    Ok(_) => {}
                    // Real time: polling the accept queue of a test listener.
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
        })
    }
}

#[test]
fn a_full_accept_queue_raises_both_alerts_after_three_samples_and_they_clear() {
    let mut st = Stalled::new();
    let port = st.port();
    let dir = portwarden_testkit::tempdir("srv-health");
    let policy = format!(
        "version = 1\n[[service]]\nname = \"rsync-mirror\"\nport = {port}\nzone = \"localhost\"\nmax_conn = 100\n"
    );
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let mut cfg = Config::new(dir.join("state"));
    cfg.policy = Some(dir.join("policy.toml"));
    let clock = ManualClock::at(1_800_000_000);
    let app = App::new(cfg, clock.clone()).unwrap();
    let rt = rt();
    let ports = |app: &Arc<App>| {
        let m = app.monitor.lock().unwrap();
        portwarden_ops::health::sample(&app.ctx("t"), app.state_dir(), Some(&m)).unwrap()
    };
    let actions = |app: &Arc<App>| -> Vec<String> {
        portwarden_ops::log::list(&app.ctx("t"), app.state_dir(), None)
            .map(|l| {
                l.records
                    .into_iter()
                    .map(|r| format!("{} {}", r.action, r.subject))
                    .collect()
            })
            .unwrap_or_default()
    };
    st.fill();
    for i in 0..3 {
        assert!(
            app.health_findings().is_empty(),
            "raised before 3 samples ({i})"
        );
        run_once(&app, Job::Health, rt.handle()).unwrap();
        clock.advance(10);
    }
    let p = ports(&app);
    let row = &p.ports[0];
    assert_eq!(
        (row.port, row.accept_queue, row.backlog),
        (port, 2, 1),
        "{row:?}"
    );
    assert_eq!(
        row.error_rate,
        Some(1.0),
        "every probe was dropped: {row:?}"
    );
    assert_eq!(
        row.alerts,
        ["port-utilisation-high", "port-error-rate-high"]
    );
    let ids: Vec<&str> = app
        .health_findings()
        .iter()
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(ids, ["port-utilisation-high", "port-error-rate-high"]);
    let raised = actions(&app);
    let subject = format!("port:tcp/{port}");
    assert!(
        raised.contains(&format!("alert.raise {subject} port-utilisation-high")),
        "{raised:?}"
    );
    assert!(
        raised.contains(&format!("alert.raise {subject} port-error-rate-high")),
        "{raised:?}"
    );
    let app2 = app.clone();
    let text = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || portwarden_server::metrics::scrape(&app2)).await
        })
        .unwrap()
        .unwrap();
    let alert = format!(
        r#"portwarden_port_alert{{service="rsync-mirror",source="service",protocol="tcp",port="{port}",rule="port-error-rate-high"}} 1"#
    );
    assert!(text.lines().any(|l| l.starts_with(&alert)), "{text}");
    // Accepting again, with a backlog: utilisation clears after three clean samples, the error rate only
    // once the failed probes have left the five-minute window.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = st.drain(60, stop.clone());
    for _ in 0..3 {
        run_once(&app, Job::Health, rt.handle()).unwrap();
        clock.advance(10);
    }
    let ids: Vec<&str> = app
        .health_findings()
        .iter()
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["port-error-rate-high"],
        "the failed probes are still in the window"
    );
    clock.advance(300);
    for _ in 0..3 {
        run_once(&app, Job::Health, rt.handle()).unwrap();
        clock.advance(10);
    }
    assert!(
        app.health_findings().is_empty(),
        "{:?}",
        app.health_findings()
    );
    let p = ports(&app);
    assert_eq!(p.ports[0].error_rate, Some(0.0));
    let all = actions(&app);
    assert!(
        all.contains(&format!("alert.clear {subject} port-utilisation-high")),
        "{all:?}"
    );
    assert!(
        all.contains(&format!("alert.clear {subject} port-error-rate-high")),
        "{all:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drainer.join().unwrap();
}

#[test]
fn a_listener_resetting_one_connection_in_four_raises_the_error_rate_alert() {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // Accepts everything; every fourth connection is aborted (RST: SO_LINGER 0), the
    // others closed cleanly. Bounded: 60 s at most.
    let server = std::thread::spawn(move || {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut n = 0u32;
        while std::time::Instant::now() < until && !stop2.load(std::sync::atomic::Ordering::SeqCst)
        {
            match l.accept() {
                Ok((c, _)) => {
                    n += 1;
                    if n % 4 == 0 {
                        let lg = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: SO_LINGER on a socket this thread owns, with a valid
                        // struct of the size given.
                        let rc = unsafe {
                            libc::setsockopt(
                                c.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&raw const lg).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            )
                        };
                        assert_eq!(rc, 0);
                    }
                    drop(c);
                }
                // Real time: polling the accept queue of a test listener.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    });
    let dir = portwarden_testkit::tempdir("srv-reset");
    let policy = format!(
        "version = 1\n[[service]]\nname = \"http-mirror\"\nport = {port}\nzone = \"localhost\"\n"
    );
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let mut cfg = Config::new(dir.join("state"));
    cfg.policy = Some(dir.join("policy.toml"));
    let clock = ManualClock::at(1_800_000_000);
    let app = App::new(cfg, clock.clone()).unwrap();
    let rt = rt();
    for _ in 0..3 {
        assert!(app.health_findings().is_empty());
        run_once(&app, Job::Health, rt.handle()).unwrap();
        clock.advance(10);
    }
    let f = app.health_findings();
    let ids: Vec<&str> = f.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["port-error-rate-high"], "{f:?}");
    let m = app.monitor.lock().unwrap();
    let p = portwarden_ops::health::sample(&app.ctx("t"), app.state_dir(), Some(&m)).unwrap();
    let rate = p.ports[0].error_rate.unwrap();
    assert!(
        (rate - 0.25).abs() < 1e-9,
        "one probe in four was reset: {rate}"
    );
    assert!(p.ports[0].utilisation.unwrap() < 0.70, "{:?}", p.ports[0]);
    drop(m);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
}
