//! The daemon: the HTTP API with auth, `/metrics`, periodic jobs and the policy it
//! serves under, wiring the use-cases of `portwarden-ops` to listeners. Contains no
//! domain logic: every answer is an ops use-case's `portwarden-api` document.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use portwarden_ops::policy::LoadedPolicy;
use portwarden_ops::{Clock, Ctx};

mod auth;
mod http;
pub mod jobs;
mod listen;
pub mod metrics;
mod scans;
pub mod webhook;

pub use http::router;

/// The default API address: loopback, port 9217.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9217";

/// How the daemon is asked to run (`portwarden serve`'s flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The API's address (`127.0.0.1:9217`).
    pub listen: SocketAddr,
    /// `/metrics` without a token, on a listener of its own.
    pub metrics_listen: Option<SocketAddr>,
    /// A Unix socket for local clients (the peer's uid is the actor; no token).
    pub socket: Option<PathBuf>,
    /// Certificate chain and key (PEM) for TLS on the TCP listeners.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve plain HTTP on a non-loopback address, said explicitly.
    pub insecure_http: bool,
    /// The policy file (`None`: the built-in baseline); re-read on SIGHUP.
    pub policy: Option<PathBuf>,
    /// The state directory of the store.
    pub state_dir: PathBuf,
    /// How often the periodic jobs run.
    pub interval: Duration,
    /// Open connections served at once per listener; more are closed at accept.
    pub max_connections: usize,
    /// A client has this long to send a request's headers (also the keep-alive idle
    /// limit): slowloris clients are closed.
    pub header_timeout: Duration,
    /// Run the policy's `[[balance]]` groups beside the API (`serve --balance`).
    pub balance: bool,
}

impl Config {
    /// The defaults of `portwarden serve`, for a state directory.
    pub fn new(state_dir: PathBuf) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9217)),
            metrics_listen: None,
            socket: None,
            tls: None,
            insecure_http: false,
            policy: None,
            state_dir,
            interval: Duration::from_secs(10),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            balance: false,
        }
    }

    /// Refuses plain HTTP on an address others can reach, unless said explicitly.
    pub fn check(&self) -> anyhow::Result<()> {
        for a in std::iter::once(self.listen).chain(self.metrics_listen) {
            if !a.ip().is_loopback() && self.tls.is_none() && !self.insecure_http {
                anyhow::bail!(
                    "{a} is not a loopback address: serving the API there needs TLS (--tls-cert and --tls-key), or --insecure-http to say plain HTTP is meant"
                );
            }
        }
        if self.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        Ok(())
    }
}

/// Set when the daemon stops: long use-cases (a scan) end early.
static STOP: AtomicBool = AtomicBool::new(false);

/// Warnings and detail of use-cases run by the daemon go to its log.
struct LogNotes;

impl portwarden_ops::Notes for LogNotes {
    fn warn(&self, msg: &str) {
        tracing::warn!("{msg}");
    }
    fn verbose(&self, msg: &str) {
        tracing::debug!("{msg}");
    }
}

/// What every request and job shares.
pub struct App {
    cfg: Config,
    clock: Arc<dyn Clock>,
    policy: RwLock<Arc<LoadedPolicy>>,
    started: Instant,
    /// The jobs' last runs, for `/api/v1/health` and metrics.
    pub jobs: jobs::Board,
    failures: Mutex<auth::Failures>,
    /// The last evaluation a job made (findings for metrics).
    latest: Mutex<Option<jobs::Latest>>,
    /// The port health alerts (the health job feeds it).
    pub monitor: Mutex<portwarden_core::health::Monitor>,
    /// The last overview (JSON), and its subscribers (`/api/v1/events`).
    overview: Mutex<Option<Arc<str>>>,
    events: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Scans asked over the API.
    scans: scans::Scans,
    /// Alert events waiting for `[alerts] webhook`.
    pub outbox: webhook::Outbox,
    /// The webhook's TLS settings (trust anchors with the policy's `ca`), made when the
    /// policy in force was loaded: a `ca` file changed later changes nothing until a
    /// SIGHUP loads it.
    hook_tls: RwLock<Option<webhook::Tls>>,
    /// Turns to build a socket inventory for a request ([`INVENTORIES`] at once).
    inventories: tokio::sync::Semaphore,
    /// The balance groups running beside the API (`serve --balance`).
    pub balance: Mutex<Option<Arc<portwarden_ops::balance::Service>>>,
}

/// Reads the policy, and what it names that the daemon uses (the webhook's `ca`).
fn load(path: Option<&std::path::Path>) -> anyhow::Result<(LoadedPolicy, Option<webhook::Tls>)> {
    let p = portwarden_ops::policy::load_policy(path)?;
    let tls = webhook::tls(&p.policy).context("[alerts] webhook")?;
    Ok((p, tls))
}

/// Socket inventories built for requests at once: each can be megabytes on a busy host.
pub const INVENTORIES: usize = 2;

impl App {
    /// Loads the policy (a bad one is an error: the daemon does not start on it).
    pub fn new(cfg: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<App>> {
        let (policy, hook_tls) = load(cfg.policy.as_deref())?;
        Ok(Arc::new(App {
            hook_tls: RwLock::new(hook_tls),
            jobs: jobs::Board::new(cfg.interval),
            cfg,
            clock,
            policy: RwLock::new(Arc::new(policy)),
            started: Instant::now(),
            failures: Mutex::new(auth::Failures::default()),
            latest: Mutex::new(None),
            monitor: Mutex::new(portwarden_core::health::Monitor::default()),
            overview: Mutex::new(None),
            events: tokio::sync::broadcast::channel(16).0,
            scans: scans::Scans::default(),
            outbox: webhook::Outbox::default(),
            inventories: tokio::sync::Semaphore::new(INVENTORIES),
            balance: Mutex::new(None),
        }))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<LoadedPolicy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The context a use-case runs with for `actor`: the daemon's clock and policy.
    pub fn ctx(&self, actor: &str) -> Ctx {
        let mut c = Ctx::quiet(&STOP);
        c.clock = self.clock.clone();
        c.notes = Arc::new(LogNotes);
        c.actor = actor.to_string();
        c.policy = Some(self.policy());
        c
    }

    /// Publishes a health sample as the overview: kept for `/api/v1/overview` and sent to
    /// every `/api/v1/events` subscriber.
    pub fn publish(&self, ports: portwarden_api::health::PortsDoc) {
        use portwarden_api::health::{FindingCount, OverviewDoc};
        let latest = self.latest();
        let mut counts: std::collections::BTreeMap<_, u64> = latest
            .as_ref()
            .map(|l| l.findings.clone())
            .unwrap_or_default();
        // The inventory's count already holds the alerts it saw; the alerts that stand
        // now replace them.
        for rule in [
            portwarden_core::findings::RuleId::PortUtilisationHigh,
            portwarden_core::findings::RuleId::PortErrorRateHigh,
        ] {
            counts.retain(|(r, _), _| *r != rule);
        }
        for f in self.health_findings() {
            *counts.entry((f.id, f.severity)).or_default() += 1;
        }
        let mut findings: Vec<FindingCount> = counts
            .into_iter()
            .map(|((rule, sev), count)| FindingCount {
                rule: rule.as_str().into(),
                severity: sev.as_str().into(),
                count,
            })
            .collect();
        findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(&b.rule)));
        let doc = OverviewDoc {
            api: portwarden_api::API_VERSION,
            at: ports.at,
            policy: self.policy().name.clone(),
            exposure: latest.map(|l| l.exposure),
            findings,
            ports: ports.ports,
        };
        let Ok(json) = serde_json::to_string(&doc) else {
            return;
        };
        let json: Arc<str> = json.into();
        if let Ok(mut o) = self.overview.lock() {
            *o = Some(json.clone());
        }
        // No subscriber is not an error.
        let _ = self.events.send(json);
    }

    /// The last overview, if a health sample has been taken.
    pub fn overview(&self) -> Option<Arc<str>> {
        self.overview.lock().ok().and_then(|o| o.clone())
    }

    /// A subscription to the overviews to come.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// The findings of the port health alerts that stand.
    pub fn health_findings(&self) -> Vec<portwarden_core::findings::Finding> {
        let ctx = self.ctx("health");
        let Ok(t) = portwarden_ops::health::thresholds(&ctx) else {
            return Vec::new();
        };
        match self.monitor.lock() {
            Ok(m) => m.findings(t),
            Err(p) => p.into_inner().findings(t),
        }
    }

    /// Queues an alert raised or cleared for the policy's webhook, when it has one.
    pub fn alert(&self, c: &portwarden_core::health::AlertChange, at: i64) {
        let p = self.policy();
        let Some(hook) = &p.policy.alerts.webhook else {
            return;
        };
        let host = p
            .policy
            .host
            .name
            .clone()
            .or_else(|| portwarden_os::hostname().ok())
            .unwrap_or_default();
        self.outbox
            .push(webhook::event(c, &host, at), hook.queue as usize);
    }

    fn replace(&self, p: LoadedPolicy, tls: Option<webhook::Tls>) {
        match self.policy.write() {
            Ok(mut w) => *w = Arc::new(p),
            Err(w) => *w.into_inner() = Arc::new(p),
        }
        match self.hook_tls.write() {
            Ok(mut w) => *w = tls,
            Err(w) => *w.into_inner() = tls,
        }
    }

    /// The webhook's TLS settings, as loaded with the policy in force.
    pub fn hook_tls(&self) -> Option<webhook::Tls> {
        match self.hook_tls.read() {
            Ok(t) => t.clone(),
            Err(t) => t.into_inner().clone(),
        }
    }

    /// Keeps the policy in force as a version (`policy history`); a store that cannot
    /// take it is a warning, not a stop.
    pub fn adopted(&self, how: &str) {
        let ctx = self.ctx(&format!(
            "portwarden serve, run by {}",
            portwarden_os::identity::actor()
        ));
        match portwarden_ops::policy::adopt(&ctx, &self.cfg.state_dir, &self.policy(), how) {
            Ok(Some(a)) => tracing::info!(
                version = portwarden_core::change::short_hash(&a.hash),
                "policy version adopted"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot keep the policy version in the store: {e:#}"),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.cfg.state_dir
    }

    /// Re-reads the policy file: a valid one replaces the one in force, a bad one is
    /// refused and the old one kept; either way the ledger says so. Returns the error of
    /// a refused one.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(path) = self.cfg.policy.as_deref() else {
            tracing::info!("SIGHUP: no policy file (the built-in baseline): nothing to re-read");
            return Ok(());
        };
        let ctx = self.ctx("portwarden serve (SIGHUP)");
        let res = load(Some(path));
        if let Ok((p, tls)) = &res {
            // The same policy again (a SIGHUP from logrotate, a reload of every unit) is
            // not a change: nothing for the ledger.
            let same = |a: &portwarden_core::policy::Policy,
                        b: &portwarden_core::policy::Policy| {
                matches!((serde_json::to_string(a), serde_json::to_string(b)), (Ok(x), Ok(y)) if x == y)
            };
            if same(&p.policy, &self.policy().policy) {
                tracing::info!(policy = %p.name, "SIGHUP: the policy is unchanged");
                // Its text may still differ (comments, layout): that is another version;
                // and a `ca` file may have been replaced (read again, as asked).
                let text_changed = *p.text != *self.policy().text;
                self.replace(p.clone(), tls.clone());
                if text_changed {
                    self.adopted("serve (SIGHUP)");
                }
                return Ok(());
            }
        }
        let (action, reason) = match &res {
            Ok(_) => ("policy.reload", None),
            Err(e) => (
                "policy.reload-refused",
                Some(format!("{e:#}; the policy in force is kept")),
            ),
        };
        let recorded = portwarden_ops::log::record_change(
            &ctx,
            &self.cfg.state_dir,
            portwarden_store::Change {
                actor: ctx.actor.clone(),
                action: action.into(),
                subject: path.display().to_string(),
                before: None,
                after: None,
                reason: reason.clone(),
            },
        );
        if let Err(e) = recorded {
            tracing::warn!("cannot record the policy reload in the ledger: {e:#}");
        }
        match res {
            Ok((p, tls)) => {
                tracing::info!(policy = %p.name, "policy re-read");
                self.replace(p, tls);
                self.adopted("serve (SIGHUP)");
                self.reload_balance();
                Ok(())
            }
            Err(e) => {
                tracing::error!("policy refused, the one in force is kept: {e:#}");
                Err(e)
            }
        }
    }
}

impl App {
    /// Starts the policy in force's balance groups (with `--balance`, when it has any).
    fn start_balance(&self) -> anyhow::Result<()> {
        let p = self.policy();
        if !self.cfg.balance || p.policy.balance.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx("portwarden serve");
        let svc = portwarden_ops::balance::Service::start(
            &ctx,
            &self.cfg.state_dir,
            &p,
            &[],
            true,
            portwarden_ops::balance::Options::default(),
        )?;
        for g in svc.status() {
            tracing::info!(group = %g.name, addr = %g.listen, kind = "balance", "listening");
        }
        if let Ok(mut b) = self.balance.lock() {
            *b = Some(Arc::new(svc));
        }
        Ok(())
    }

    /// The balance groups follow a re-read policy (listeners and connections stay).
    fn reload_balance(&self) {
        let running = self.balance.lock().ok().and_then(|b| b.clone());
        let r = match running {
            Some(svc) => svc.reload(&self.policy()),
            None => self.start_balance(),
        };
        if let Err(e) = r {
            tracing::error!("balance groups not reloaded, they run as before: {e:#}");
        }
    }

    /// The balance groups' state, as `balance status` shows a running balancer.
    pub fn balance_status(&self) -> Option<portwarden_api::balance::BalanceStatusDoc> {
        let svc = self.balance.lock().ok().and_then(|b| b.clone())?;
        let groups = svc.status();
        let now = self.clock.now();
        Some(portwarden_api::balance::BalanceStatusDoc {
            api: portwarden_api::API_VERSION,
            running: true,
            workers: vec![portwarden_api::balance::WorkerDoc {
                index: 0,
                pid: std::process::id(),
                started: now - self.started.elapsed().as_secs() as i64,
                updated: now,
                policy: self.policy().name.clone(),
                alive: true,
                groups: groups.clone(),
            }],
            groups,
        })
    }
}

/// Sets up the log: text with colours on a terminal, else plain text; JSON lines when
/// asked. Logs go to stderr.
pub fn init_logging(json: bool, verbose: u8) {
    use std::io::IsTerminal;
    let level = match verbose {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().flatten_event(true).try_init()
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Runs the daemon until SIGTERM or SIGINT: binds every listener, starts the jobs, tells
/// systemd it is ready; on SIGHUP re-reads the policy. On stop: no new connections,
/// in-flight requests finish (bounded), jobs stop, the store is closed.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.check()?;
    // Caught before anything says it listens: a SIGHUP sent at once must not kill us.
    let signals = Signals::new()?;
    let app = App::new(cfg.clone(), Arc::new(portwarden_ops::SystemClock))?;
    app.adopted("serve");
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
        None => None,
    };
    // The groups listen before the API says it does: a client told "ready" finds them.
    app.start_balance()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let api = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(addr = %api.local_addr()?, kind = "api", tls = tls.is_some(), "listening");
    tasks.spawn(listen::tcp(
        api,
        tls.clone(),
        http::router(app.clone()),
        cfg.clone(),
        stop_rx.clone(),
    ));
    if let Some(m) = cfg.metrics_listen {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("cannot listen on {m}"))?;
        tracing::info!(addr = %l.local_addr()?, kind = "metrics", tls = tls.is_some(), "listening");
        tasks.spawn(listen::tcp(
            l,
            tls.clone(),
            http::metrics_router(app.clone()),
            cfg.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(path) = &cfg.socket {
        let l = listen::unix_listener(path)?;
        tracing::info!(path = %path.display(), kind = "socket", "listening");
        tasks.spawn(listen::unix(
            l,
            http::router(app.clone()),
            cfg.clone(),
            stop_rx.clone(),
        ));
    }
    let jobs = jobs::spawn_all(app.clone(), stop_rx.clone());
    let hooks = tokio::spawn(webhook::run(app.clone(), stop_rx.clone()));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    signals.wait_for_stop(&app).await;
    tracing::info!("stopping: finishing requests in flight");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    // Listeners drain their connections (bounded in `listen`); jobs end their run.
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!("listener: {e:#}");
        }
    }
    jobs.stop().await;
    let balance = app.balance.lock().ok().and_then(|mut b| b.take());
    if let Some(svc) = balance {
        tracing::info!("stopping: draining the balance groups");
        let last = svc.stop().await;
        svc.record_stop(&last, 0).await;
    }
    if !app.scans.idle(Duration::from_secs(5)).await {
        tracing::warn!("a scan did not stop in 5 s: it is abandoned");
    }
    let _ = hooks.await;
    if let Some(path) = &cfg.socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The signals the daemon acts on, caught from its start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot catch SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT, re-reading the policy on each SIGHUP meanwhile.
    async fn wait_for_stop(mut self, app: &Arc<App>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let app = app.clone();
                    let _ = tokio::task::spawn_blocking(move || app.reload()).await;
                }
            }
        }
    }
}
