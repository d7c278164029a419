//! The daemon's periodic jobs, each an ops use-case run on a blocking thread: inventory
//! and identity check (`check`'s evaluation, kept for metrics), lease reclaim, the
//! commit-confirm deadline (a pending apply always has a live watcher), and ledger
//! retention, port health (utilisation and error-rate alerts). Each run's start, duration and error are kept on the [`Board`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwarden_api::serve::JobDoc;
use portwarden_core::findings::{RuleId, Severity};
use tokio::sync::watch;

use crate::App;

/// A periodic job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum Job {
    /// Sockets, owners and identities against the policy (hijack detection).
    Inventory,
    /// Expired and idle leases retired, their ports back in the pool.
    Reclaim,
    /// A pending firewall apply past its deadline is rolled back (its watcher re-armed).
    FwDeadline,
    /// Ledger records older than the policy's retention pruned through a checkpoint.
    Retention,
    /// Every managed port sampled and probed; utilisation and error-rate alerts.
    Health,
}

impl Job {
    /// The job's name in health and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// How often it runs, given the daemon's interval.
    fn every(self, interval: Duration) -> Duration {
        match self {
            Job::Retention => interval.max(Duration::from_secs(3600)),
            _ => interval,
        }
    }
}

/// What the inventory job saw last: findings by rule and severity.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// Unix seconds.
    pub at: i64,
    /// Findings per (rule, severity).
    pub findings: BTreeMap<(RuleId, Severity), u64>,
    /// The exposure score.
    pub exposure: f64,
}

#[derive(Debug, Clone, Default)]
struct Run {
    runs: u64,
    failures: u64,
    last_run: Option<i64>,
    last_duration: Option<Duration>,
    last_error: Option<String>,
}

/// Every job's last run.
pub struct Board {
    interval: Duration,
    runs: Mutex<BTreeMap<Job, Run>>,
}

impl Board {
    /// An empty board.
    pub fn new(interval: Duration) -> Board {
        use strum::IntoEnumIterator;
        Board {
            interval,
            runs: Mutex::new(Job::iter().map(|j| (j, Run::default())).collect()),
        }
    }

    fn record(&self, job: Job, at: i64, took: Duration, r: &anyhow::Result<()>) {
        let mut m = match self.runs.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let e = m.entry(job).or_default();
        e.runs += 1;
        e.last_run = Some(at);
        e.last_duration = Some(took);
        e.last_error = r.as_ref().err().map(|e| format!("{e:#}"));
        if r.is_err() {
            e.failures += 1;
        }
    }

    /// The jobs as `/api/v1/health` shows them.
    pub fn docs(&self) -> Vec<JobDoc> {
        let m = match self.runs.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.iter()
            .map(|(j, r)| JobDoc {
                name: j.as_str().into(),
                interval_secs: j.every(self.interval).as_secs(),
                runs: r.runs,
                failures: r.failures,
                last_run: r.last_run,
                last_duration_ms: r.last_duration.map(|d| d.as_millis() as u64),
                last_error: r.last_error.clone(),
            })
            .collect()
    }
}

/// Runs one job once, now, and records it on the board.
pub fn run_once(app: &Arc<App>, job: Job, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let ctx = app.ctx(&format!("portwarden serve ({} job)", job.as_str()));
    let dir = app.state_dir();
    let (at, started) = (ctx.clock.now(), Instant::now());
    let r = match job {
        Job::Inventory => rt
            .block_on(portwarden_ops::check::evaluate(&ctx, None, dir))
            .map(|e| {
                let mut findings = BTreeMap::new();
                for f in e.findings.iter().chain(&app.health_findings()) {
                    *findings.entry((f.id, f.severity)).or_insert(0) += 1;
                }
                let latest = Latest {
                    at,
                    findings,
                    exposure: e.exposure_total,
                };
                if let Ok(mut l) = app.latest.lock() {
                    *l = Some(latest);
                }
            }),
        Job::Reclaim => rt
            .block_on(portwarden_ops::lease::reclaim(&ctx, None, dir, false))
            .map(|d| {
                for r in &d.reclaimed {
                    tracing::info!(lease = r.lease.id, port = r.lease.port, action = %r.action, reason = %r.reason, "reclaimed");
                }
            }),
        Job::FwDeadline => portwarden_ops::fw::recover_expired(&ctx, dir),
        Job::Health => rt
            .block_on(portwarden_ops::health::step(&ctx, dir, &app.monitor))
            .map(|(doc, changes)| {
                app.publish(doc);
                for c in &changes {
                    app.alert(c, at);
                    let port = format!("{}/{}", c.port.port, c.port.protocol);
                    if c.raised {
                        tracing::warn!(rule = c.rule.as_str(), %port, service = %c.port.service, "alert raised: {}", c.describe());
                    } else {
                        tracing::info!(rule = c.rule.as_str(), %port, service = %c.port.service, "alert cleared: {}", c.describe());
                    }
                }
            }),
        Job::Retention => portwarden_ops::log::prune(&ctx, None, dir, false).map(|d| {
            if d.deleted && d.records > 0 {
                tracing::info!(deleted = d.records, "ledger retention pruned records");
            }
        }),
    };
    if let Err(e) = &r {
        tracing::warn!(job = job.as_str(), "job failed: {e:#}");
    }
    app.jobs.record(job, at, started.elapsed(), &r);
    r
}

/// The running jobs.
pub struct Jobs {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Jobs {
    /// Waits for each job to end its current run (they stop at the next tick).
    pub async fn stop(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts every job on its interval, the first run at once; each stops when `stop` turns.
pub fn spawn_all(app: Arc<App>, stop: watch::Receiver<bool>) -> Jobs {
    use strum::IntoEnumIterator;
    let tasks = Job::iter()
        .map(|job| {
            let (app, mut stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(job.every(app.cfg.interval));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let (app, rt) = (app.clone(), tokio::runtime::Handle::current());
                    let _ = tokio::task::spawn_blocking(move || run_once(&app, job, &rt)).await;
                }
            })
        })
        .collect();
    Jobs { tasks }
}

impl App {
    /// What the inventory job saw last.
    pub fn latest(&self) -> Option<Latest> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }
}
