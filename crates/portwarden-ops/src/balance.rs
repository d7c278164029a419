//! `portwarden balance`: runs the policy's `[[balance]]` groups (net's `Balancer`) until
//! told to stop, reloading on request; worker 0 starts the other workers (this executable
//! again, sharing each port with `SO_REUSEPORT`), records every start, reload, backend
//! up/down and stop in the ledger; every worker writes its status file each second, which
//! `balance status` sums.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use portwarden_api::API_VERSION;
use portwarden_api::balance::{BalanceRunDoc, BalanceStatusDoc, WorkerDoc};
use portwarden_core::balance::{BackendStatus, GroupStatus};
use portwarden_core::policy::{Balance, Policy};
use portwarden_core::{Port, Protocol};
use portwarden_net::balance::{Balancer, Event, StartError};
pub use portwarden_net::balance::{Mode, Options};
use tokio::sync::mpsc;

use crate::Ctx;

/// The most worker processes (each holds up to 20,000 descriptors).
pub const MAX_WORKERS: u32 = 64;
/// A status file older than this is a dead worker's.
const STALE_SECS: i64 = 5;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunReq {
    /// Only these groups (none: every group).
    pub groups: Vec<String>,
    /// Worker processes in all (1: this one only).
    pub workers: u32,
    /// This process's index: 0 for the one the operator started.
    pub worker_index: u32,
    /// Copy through user space instead of splice.
    pub copy: bool,
}

/// What the caller asks of a running balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the policy (SIGHUP).
    Reload,
    /// Drain and stop (SIGTERM, SIGINT).
    Stop,
}

/// The policy's groups that `names` pick (all when empty).
pub fn select(policy: &Policy, names: &[String]) -> anyhow::Result<Vec<Balance>> {
    if policy.balance.is_empty() {
        bail!("the policy has no [[balance]] groups to run");
    }
    if names.is_empty() {
        return Ok(policy.balance.clone());
    }
    let mut out = Vec::new();
    for n in names {
        match policy.balance.iter().find(|b| &b.name == n) {
            Some(b) => out.push(b.clone()),
            None => bail!(
                "the policy has no balance group `{}` (it has: {})",
                n.escape_debug(),
                policy
                    .balance
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}

/// A start error, with who holds the address when it is in use.
fn explain(ctx: &Ctx, e: StartError) -> anyhow::Error {
    let Some((addr, proto)) = e.in_use() else {
        return anyhow::Error::new(e);
    };
    let protocol = if proto == "udp" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let holders = Port::new(addr.port())
        .and_then(|p| crate::inventory::who(ctx, p, &[protocol]).ok())
        .map(|w| {
            let mut names: Vec<String> = w
                .sockets
                .iter()
                .filter(|s| {
                    s.local_addr == addr.ip()
                        || s.local_addr.is_unspecified()
                        || addr.ip().is_unspecified()
                })
                .flat_map(|s| s.owners.clone().unwrap_or_default())
                .map(|o| {
                    format!(
                        "{} (pid {})",
                        portwarden_core::diag::strip_unsafe(&o.comm, 40),
                        o.pid
                    )
                })
                .collect();
            names.sort();
            names.dedup();
            names
        })
        .unwrap_or_default();
    let who = if holders.is_empty() {
        "another socket (its owner is not visible to us)".to_string()
    } else {
        holders.join(", ")
    };
    anyhow::Error::new(e).context(format!("{addr}/{proto} is already held by {who}"))
}

/// Holds `balance/lock` (flock) while this balancer runs.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let d = status_dir(dir);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    let path = d.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another `portwarden balance` runs with the state directory {} (its lock is held)",
            dir.display()
        );
    }
    Ok(f)
}

fn status_dir(dir: &Path) -> PathBuf {
    dir.join("balance")
}

fn status_file(dir: &Path, index: u32) -> PathBuf {
    status_dir(dir).join(format!("worker-{index}.json"))
}

fn write_status(dir: &Path, w: &WorkerDoc) -> std::io::Result<()> {
    let d = status_dir(dir);
    std::fs::create_dir_all(&d)?;
    let tmp = d.join(format!(".worker-{}.json.tmp", w.index));
    let body = serde_json::to_vec(w).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, status_file(dir, w.index))
}

fn record(
    ctx: &Ctx,
    dir: &Path,
    action: &str,
    subject: String,
    after: Option<serde_json::Value>,
    reason: Option<String>,
) -> tokio::task::JoinHandle<()> {
    let (ctx2, dir2) = (ctx.clone(), dir.to_path_buf());
    let change = portwarden_store::Change {
        actor: ctx.actor.clone(),
        action: action.to_string(),
        subject,
        before: None,
        after: after.map(|v| v.to_string()),
        reason,
    };
    // The ledger is SQLite: off the runtime's threads, and never fatal to the traffic.
    let notes = ctx.notes.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::log::record_change(&ctx2, &dir2, change) {
            notes.warn(&format!("cannot record in the ledger: {e:#}"));
        }
    })
}

fn describe(groups: &[Balance]) -> serde_json::Value {
    serde_json::Value::Array(
        groups
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "listen": b.listen.to_string(),
                    "protocol": b.protocol.as_str(),
                    "backends": b.backends.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>(),
                    "backup": b.backup.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn names(groups: &[Balance]) -> String {
    groups
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The policy's groups running in this process: started, reloaded and stopped here, the
/// backends' up/down changes recorded (by the leader) as they come. `portwarden balance`
/// runs one per worker; `serve --balance` runs one beside the API.
pub struct Service {
    bal: Balancer,
    names: Vec<String>,
    leader: bool,
    ctx: Ctx,
    dir: PathBuf,
    groups: std::sync::Mutex<Vec<Balance>>,
    pump: tokio::task::JoinHandle<()>,
    /// A backend went up or down (the status file is written at once, not at the tick).
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Service {
    /// Binds and starts `names` of `policy` (all when empty). Must run inside a tokio
    /// runtime. The leader records `balance.start` and every backend change.
    pub fn start(
        ctx: &Ctx,
        dir: &Path,
        policy: &crate::policy::LoadedPolicy,
        names: &[String],
        leader: bool,
        opts: Options,
    ) -> anyhow::Result<Service> {
        let groups = select(&policy.policy, names)?;
        let (bal, mut events) = Balancer::start(&groups, opts).map_err(|e| explain(ctx, e))?;
        if leader {
            record(
                ctx,
                dir,
                "balance.start",
                self::names(&groups),
                Some(serde_json::json!({ "groups": describe(&groups), "policy": policy.name })),
                None,
            );
            for b in &groups {
                ctx.notes.verbose(&format!(
                    "balance group {}: {}/{} over {} backends",
                    b.name,
                    b.listen,
                    b.protocol.as_str(),
                    b.backends.len() + b.backup.len()
                ));
            }
        }
        let (c, d) = (ctx.clone(), dir.to_path_buf());
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let changed2 = changed.clone();
        let pump = tokio::spawn(async move {
            while let Some(Event {
                group,
                backend,
                up,
                why,
            }) = events.recv().await
            {
                changed2.notify_one();
                if !leader {
                    continue;
                }
                let why = portwarden_core::diag::strip_unsafe(&why, 300);
                if up {
                    c.notes.verbose(&format!(
                        "balance group {group}: backend {backend} is up ({why})"
                    ));
                } else {
                    c.notes.warn(&format!(
                        "balance group {group}: backend {backend} is down ({why})"
                    ));
                }
                record(
                    &c,
                    &d,
                    if up {
                        "balance.backend-up"
                    } else {
                        "balance.backend-down"
                    },
                    format!("{group}/{backend}"),
                    None,
                    Some(why),
                );
            }
        });
        Ok(Service {
            bal,
            names: names.to_vec(),
            leader,
            ctx: ctx.clone(),
            dir: dir.to_path_buf(),
            groups: std::sync::Mutex::new(groups),
            pump,
            changed,
        })
    }

    /// Applies a new policy's groups (an empty list stops them all); an error leaves the
    /// running groups as they were.
    pub fn reload(&self, policy: &crate::policy::LoadedPolicy) -> anyhow::Result<()> {
        let groups = if policy.policy.balance.is_empty() && self.names.is_empty() {
            Vec::new()
        } else {
            select(&policy.policy, &self.names)?
        };
        self.bal
            .reload(&groups)
            .map_err(|e| explain(&self.ctx, e))?;
        if self.leader {
            record(
                &self.ctx,
                &self.dir,
                "balance.reload",
                names(&groups),
                Some(serde_json::json!({ "groups": describe(&groups), "policy": policy.name })),
                None,
            );
        }
        if let Ok(mut g) = self.groups.lock() {
            *g = groups;
        }
        Ok(())
    }

    /// The groups' state and counters.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.bal.status()
    }

    /// The longest `drain_timeout` of the groups.
    fn longest_drain(&self) -> Duration {
        self.groups
            .lock()
            .map(|g| {
                g.iter()
                    .map(|b| b.drain_timeout.get())
                    .max()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Stops accepting, drains, and returns the last counters.
    pub async fn stop(&self) -> Vec<GroupStatus> {
        let last = self.bal.stop().await;
        self.pump.abort();
        last
    }

    /// The leader's `balance.stop` record (what every worker served), waited for.
    pub async fn record_stop(&self, served: &[GroupStatus], reloads: u32) {
        if !self.leader {
            return;
        }
        let accepted: u64 = served.iter().map(|g| g.accepted).sum();
        let subject = self.groups.lock().map(|g| names(&g)).unwrap_or_default();
        // Waited for: the process exits next.
        let _ = record(
            &self.ctx,
            &self.dir,
            "balance.stop",
            subject,
            Some(serde_json::json!({ "accepted": accepted, "reloads": reloads })),
            None,
        )
        .await;
    }
}

/// A worker process this one started.
struct Child {
    index: u32,
    child: std::process::Child,
    /// Restarted too often: left dead.
    given_up: bool,
}

fn spawn_worker(
    dir: &Path,
    policy: Option<&Path>,
    req: &RunReq,
    index: u32,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir").arg(dir);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    cmd.args([
        "balance",
        "--worker-index",
        &index.to_string(),
        "--workers",
        &req.workers.to_string(),
    ]);
    for g in &req.groups {
        cmd.args(["--group", g]);
    }
    if req.copy {
        cmd.arg("--copy");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // A SIGHUP forwarded before the worker has set up its handler would kill it: it is
    // ignored until then (the disposition survives exec; the handler replaces it).
    // SAFETY: signal() is async-signal-safe and touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start balance worker {index}"))?;
    Ok(Child {
        index,
        child,
        given_up: false,
    })
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
    unsafe { libc::kill(c.child.id() as libc::pid_t, sig) };
}

/// Runs the balancer until `control` says stop (or, in a worker, the process that started
/// it is gone).
pub async fn run(
    ctx: &Ctx,
    dir: &Path,
    policy_path: Option<&Path>,
    req: &RunReq,
    mut control: mpsc::Receiver<Control>,
) -> anyhow::Result<BalanceRunDoc> {
    if req.workers == 0 || req.workers > MAX_WORKERS {
        bail!(
            "--workers must be 1 to {MAX_WORKERS}, found {}",
            req.workers
        );
    }
    let loaded = crate::policy::load(ctx, policy_path)?;
    let leader = req.worker_index == 0;
    // One balancer per state directory: its status files and ledger are one run's.
    let _lock = if leader { Some(lock(dir)?) } else { None };
    let opts = Options {
        reuseport: req.workers > 1,
        mode: if req.copy { Mode::Copy } else { Mode::Splice },
        // The first worker makes sure nobody holds the ports; the others join it.
        exclusive: leader,
    };
    let svc = Service::start(ctx, dir, &loaded, &req.groups, leader, opts)?;
    let started = ctx.clock.now();
    if leader {
        // Files a killed balancer left behind.
        if let Ok(st) = status(ctx, dir) {
            for w in st.workers.iter().filter(|w| !w.alive) {
                let _ = std::fs::remove_file(status_file(dir, w.index));
            }
        }
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let mut children = Vec::new();
    if leader {
        for i in 1..req.workers {
            match spawn_worker(dir, policy_path, req, i) {
                Ok(c) => children.push(c),
                Err(e) => {
                    for c in &children {
                        signal(c, libc::SIGTERM);
                    }
                    svc.stop().await;
                    return Err(e);
                }
            }
        }
    }
    let mut policy_name = loaded.name.clone();
    let mut reloads = 0u32;
    let mut restarts: Vec<i64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Reload) => {
                    // The leader first: its check that new ports are free must not meet
                    // its own workers, already on them.
                    let r = crate::policy::load_policy(policy_path).and_then(|l| {
                        svc.reload(&l)?;
                        Ok(l.name)
                    });
                    for c in &children {
                        signal(c, libc::SIGHUP);
                    }
                    match r {
                        Ok(name) => {
                            reloads += 1;
                            policy_name = name;
                        }
                        Err(e) => ctx.notes.warn(&format!(
                            "reload refused, the groups run as before: {}",
                            format!("{e:#}").trim_end().replace('\n', "; ")
                        )),
                    }
                }
                Some(Control::Stop) | None => break,
            },
            _ = svc.changed.notified() => {
                let w = worker_doc(req, started, ctx.clock.now(), &policy_name, svc.status());
                let _ = write_status(dir, &w);
            }
            _ = tick.tick() => {
                let now = ctx.clock.now();
                let w = worker_doc(req, started, now, &policy_name, svc.status());
                if let Err(e) = write_status(dir, &w) {
                    ctx.notes.verbose(&format!("cannot write the balance status file: {e}"));
                }
                // SAFETY: getppid has no preconditions.
                if !leader && unsafe { libc::getppid() } != parent {
                    // The process that started us is gone: drain and stop.
                    break;
                }
                for c in children.iter_mut().filter(|c| !c.given_up) {
                    if let Ok(Some(st)) = c.child.try_wait() {
                        restarts.retain(|t| now - t < 60);
                        if restarts.len() >= 5 {
                            ctx.notes.warn(&format!("balance worker {} exited ({st}) and has restarted 5 times in a minute: not again", c.index));
                            c.given_up = true;
                            continue;
                        }
                        ctx.notes.warn(&format!("balance worker {} exited ({st}); starting it again", c.index));
                        restarts.push(now);
                        if let Ok(n) = spawn_worker(dir, policy_path, req, c.index) {
                            *c = n;
                        }
                    }
                }
            }
        }
    }
    for c in &children {
        signal(c, libc::SIGTERM);
    }
    let served = svc.stop().await;
    let mine = worker_doc(req, started, ctx.clock.now(), &policy_name, served);
    // The workers drain too; one that outlives the longest drain is killed.
    let deadline = tokio::time::Instant::now() + svc.longest_drain() + Duration::from_secs(5);
    for c in &mut children {
        while matches!(c.child.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() >= deadline {
                signal(c, libc::SIGKILL);
                let _ = c.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A worker leaves its last counters for the leader, which sums them and removes them.
    let mut last = mine.groups.clone();
    if leader {
        let mut docs = vec![mine];
        for c in &children {
            let f = status_file(dir, c.index);
            if let Some(w) = std::fs::read(&f)
                .ok()
                .and_then(|t| serde_json::from_slice::<WorkerDoc>(&t).ok())
            {
                docs.push(w);
            }
            let _ = std::fs::remove_file(f);
        }
        last = merge(&docs.iter().collect::<Vec<_>>());
        let _ = std::fs::remove_file(status_file(dir, 0));
        svc.record_stop(&last, reloads).await;
    } else if let Err(e) = write_status(dir, &mine) {
        ctx.notes
            .verbose(&format!("cannot write the balance status file: {e}"));
    }
    Ok(BalanceRunDoc {
        api: API_VERSION,
        workers: req.workers,
        reloads,
        groups: last,
    })
}

/// This process's status file.
fn worker_doc(
    req: &RunReq,
    started: i64,
    now: i64,
    policy: &str,
    groups: Vec<GroupStatus>,
) -> WorkerDoc {
    WorkerDoc {
        index: req.worker_index,
        pid: std::process::id(),
        started,
        updated: now,
        policy: policy.to_string(),
        alive: true,
        groups,
    }
}

/// Whether `pid` is a running `portwarden balance` (a forged or stale file naming another
/// process, pid 1 say, is not).
fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    // Our executable (by its name, or the very file that runs us), with `balance`.
    let ours = args.first().is_some_and(|a| a.ends_with(b"portwarden"))
        || matches!(
            (std::fs::read_link(format!("/proc/{pid}/exe")), std::env::current_exe()),
            (Ok(a), Ok(b)) if a == b
        );
    ours && args.iter().any(|a| *a == b"balance")
}

/// `balance status`: every worker's status file, and the groups summed over the live ones.
pub fn status(ctx: &Ctx, dir: &Path) -> anyhow::Result<BalanceStatusDoc> {
    let now = ctx.clock.now();
    let mut workers = Vec::new();
    if let Ok(rd) = std::fs::read_dir(status_dir(dir)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !(name.starts_with("worker-") && name.ends_with(".json")) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || meta.len() > 8 << 20 {
                continue;
            }
            let Ok(text) = std::fs::read(e.path()) else {
                continue;
            };
            match serde_json::from_slice::<WorkerDoc>(&text) {
                Ok(mut w) => {
                    w.alive = alive(w.pid) && (now - w.updated).abs() <= STALE_SECS;
                    workers.push(w);
                }
                Err(err) => ctx.notes.warn(&format!(
                    "{}: not a balance status file: {err}",
                    e.path().display()
                )),
            }
        }
    }
    workers.sort_by_key(|w| w.index);
    let live: Vec<&WorkerDoc> = workers.iter().filter(|w| w.alive).collect();
    Ok(BalanceStatusDoc {
        api: API_VERSION,
        running: !live.is_empty(),
        groups: merge(&live),
        workers,
    })
}

/// Sums the workers' groups: counters add up; a backend is up when every worker says so.
fn merge(workers: &[&WorkerDoc]) -> Vec<GroupStatus> {
    let mut out: BTreeMap<String, GroupStatus> = BTreeMap::new();
    for w in workers {
        for g in &w.groups {
            let Some(m) = out.get_mut(&g.name) else {
                out.insert(g.name.clone(), g.clone());
                continue;
            };
            m.accepted = m.accepted.saturating_add(g.accepted);
            m.active = m.active.saturating_add(g.active);
            m.refused_source_conn = m.refused_source_conn.saturating_add(g.refused_source_conn);
            m.refused_source_rate = m.refused_source_rate.saturating_add(g.refused_source_rate);
            m.no_backend = m.no_backend.saturating_add(g.no_backend);
            m.queued = m.queued.saturating_add(g.queued);
            m.queue_timeouts = m.queue_timeouts.saturating_add(g.queue_timeouts);
            m.redispatched = m.redispatched.saturating_add(g.redispatched);
            m.idle_closed = m.idle_closed.saturating_add(g.idle_closed);
            m.bad_proxy_header = m.bad_proxy_header.saturating_add(g.bad_proxy_header);
            m.local_errors = m.local_errors.saturating_add(g.local_errors);
            for b in &g.backends {
                match m.backends.iter_mut().find(|x| x.addr == b.addr) {
                    Some(x) => add(x, b),
                    None => m.backends.push(b.clone()),
                }
            }
        }
    }
    out.into_values().collect()
}

fn add(x: &mut BackendStatus, b: &BackendStatus) {
    x.up &= b.up;
    x.active = x.active.saturating_add(b.active);
    x.total = x.total.saturating_add(b.total);
    x.bytes_in = x.bytes_in.saturating_add(b.bytes_in);
    x.bytes_out = x.bytes_out.saturating_add(b.bytes_out);
    x.failed_connects = x.failed_connects.saturating_add(b.failed_connects);
    x.failed_checks = x.failed_checks.saturating_add(b.failed_checks);
    x.transitions = x.transitions.max(b.transitions);
    if x.last_error.is_none() {
        x.last_error = b.last_error.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(up: bool, total: u64) -> BackendStatus {
        BackendStatus {
            addr: "127.0.0.1:1".parse().unwrap(),
            backup: false,
            weight: 1,
            up,
            active: 1,
            total,
            bytes_in: 10,
            bytes_out: 20,
            failed_connects: 0,
            failed_checks: 1,
            check_ms: Some(0.5),
            last_error: None,
            transitions: 0,
        }
    }

    #[test]
    fn workers_sum_and_a_backend_is_up_only_if_every_worker_says_so() {
        let g = |up, total| GroupStatus {
            name: "g".into(),
            listen: "127.0.0.1:2".parse().unwrap(),
            protocol: "tcp".into(),
            algorithm: "round-robin".into(),
            accepted: total,
            active: 1,
            refused_source_conn: 0,
            refused_source_rate: 0,
            no_backend: 0,
            queued: 0,
            queue_timeouts: 0,
            redispatched: 0,
            idle_closed: 0,
            bad_proxy_header: 0,
            local_errors: 0,
            backends: vec![backend(up, total)],
        };
        let w = |i, up, total| WorkerDoc {
            index: i,
            pid: 1,
            started: 0,
            updated: 0,
            policy: "p".into(),
            alive: true,
            groups: vec![g(up, total)],
        };
        let (a, b) = (w(0, true, 5), w(1, false, 7));
        let m = merge(&[&a, &b]);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].accepted, m[0].active), (12, 2));
        assert_eq!(m[0].backends[0].total, 12);
        assert!(!m[0].backends[0].up);
    }
}
