//! Scans asked of the daemon (`POST /api/v1/scans`): one runs at a time, on addresses
//! the policy's `[scan]` allows (checked, and names resolved, before it starts); the
//! last [`KEPT`] are kept in memory for polling. Each start is a ledger record.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portwarden_api::API_VERSION;
use portwarden_api::scan::ScanDoc;
use portwarden_api::serve::ScanJobDoc;

/// Scans kept for polling, running or finished.
pub const KEPT: usize = 16;

/// How a scan ended, or that it has not.
#[derive(Debug, Clone)]
enum Outcome {
    Running,
    Done(Arc<ScanDoc>),
    /// Stopped (the daemon was told to stop) before every port was settled: what was.
    Interrupted(Arc<ScanDoc>),
    Failed(String),
}

/// One scan.
#[derive(Debug)]
pub struct Scan {
    id: u64,
    actor: String,
    targets: Vec<IpAddr>,
    started: i64,
    finished: Mutex<Option<(i64, Outcome)>>,
    done: AtomicU64,
    total: AtomicU64,
}

impl Scan {
    fn outcome(&self) -> (Option<i64>, Outcome) {
        match self.finished.lock() {
            Ok(f) => f.clone(),
            Err(p) => p.into_inner().clone(),
        }
        .map_or((None, Outcome::Running), |(at, o)| (Some(at), o))
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        matches!(self.outcome().1, Outcome::Running)
    }

    /// Its document; the result only when `full`.
    pub fn doc(&self, full: bool) -> ScanJobDoc {
        let (finished, outcome) = self.outcome();
        let (state, error, result) = match outcome {
            Outcome::Running => ("running", None, None),
            Outcome::Done(d) => ("done", None, full.then(|| (*d).clone())),
            Outcome::Interrupted(d) => ("interrupted", None, full.then(|| (*d).clone())),
            Outcome::Failed(e) => ("failed", Some(e), None),
        };
        ScanJobDoc {
            api: API_VERSION,
            id: self.id,
            state: state.into(),
            actor: self.actor.clone(),
            targets: self.targets.clone(),
            started: self.started,
            finished,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            error,
            result,
        }
    }

    /// Reports progress (the use-case's callback).
    pub fn progress(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Records how it ended.
    pub fn finish(&self, at: i64, r: anyhow::Result<ScanDoc>) {
        let o = match r {
            Ok(d) if d.interrupted => Outcome::Interrupted(Arc::new(d)),
            Ok(d) => Outcome::Done(Arc::new(d)),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        match self.finished.lock() {
            Ok(mut f) => *f = Some((at, o)),
            Err(p) => *p.into_inner() = Some((at, o)),
        }
    }
}

/// The scans kept, most recent last.
#[derive(Debug, Default)]
pub struct Scans {
    /// The last id given.
    last: AtomicU64,
    kept: Mutex<VecDeque<Arc<Scan>>>,
}

impl Scans {
    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Scan>>> {
        match self.kept.lock() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        }
    }

    /// A new running scan, unless one runs: then that one is the error. Its id is the
    /// start's Unix time in milliseconds, or one more than the last id when that is
    /// larger: unique across restarts too, so `scan:ID` in the ledger names one scan.
    pub fn begin(
        &self,
        actor: &str,
        targets: Vec<IpAddr>,
        now: i64,
    ) -> Result<Arc<Scan>, Arc<Scan>> {
        let mut k = self.kept();
        if let Some(r) = k.iter().find(|s| s.running()) {
            return Err(r.clone());
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last.load(Ordering::Relaxed);
        let id = ms.max(last + 1);
        self.last.store(id, Ordering::Relaxed);
        let s = Arc::new(Scan {
            id,
            actor: actor.to_string(),
            targets,
            started: now,
            finished: Mutex::new(None),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        k.push_back(s.clone());
        while k.len() > KEPT {
            // The oldest finished one goes; the running one (at most one) stays.
            match k.iter().position(|s| !s.running()) {
                Some(i) => {
                    k.remove(i);
                }
                None => break,
            }
        }
        Ok(s)
    }

    /// Withdraws a scan that could not be started.
    pub fn abandon(&self, id: u64) {
        self.kept().retain(|s| s.id != id);
    }

    /// One scan.
    pub fn get(&self, id: u64) -> Option<Arc<Scan>> {
        self.kept().iter().find(|s| s.id == id).cloned()
    }

    /// Waits until no scan runs (a stop ends one within a tenth of a second), at most
    /// `limit`; whether none does.
    pub async fn idle(&self, limit: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while self.kept().iter().any(|s| s.running()) {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Every scan kept, the most recent first.
    pub fn list(&self) -> Vec<Arc<Scan>> {
        self.kept().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runs_at_a_time_and_the_oldest_finished_ones_go() {
        let s = Scans::default();
        let a = s.begin("t", vec![], 1).expect("first");
        assert_eq!(s.begin("t", vec![], 2).expect_err("busy").id, a.id);
        a.finish(3, Err(anyhow::anyhow!("boom")));
        assert_eq!(a.doc(true).state, "failed");
        for i in 0..(KEPT as i64 + 4) {
            let b = s.begin("t", vec![], i).expect("free");
            b.progress(1, 2);
            b.finish(
                i,
                Ok(serde_json::from_value(serde_json::json!({
                    "args": "", "protocol": "tcp", "started": 0, "elapsed_ms": 0, "hosts": [],
                    "ports_scanned": 0, "ports": [], "closed": 0, "probes": 0, "self_connects": 0
                }))
                .expect("doc")),
            );
        }
        let l = s.list();
        assert_eq!(l.len(), KEPT);
        assert!(s.get(a.id).is_none());
        // Ids only grow, and are not small numbers a restart would give again.
        assert!(l.windows(2).all(|w| w[0].id > w[1].id));
        assert!(a.id > 1_700_000_000_000, "{}", a.id);
        assert!(l[0].doc(true).result.is_some());
        assert!(l[0].doc(false).result.is_none());
        assert_eq!((l[0].doc(false).done, l[0].doc(false).total), (1, 2));
        let c = s.begin("t", vec![], 99).expect("free");
        s.abandon(c.id);
        assert!(s.get(c.id).is_none());
    }
}
