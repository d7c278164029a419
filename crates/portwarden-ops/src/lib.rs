//! The use-cases, one module each, shared by the CLI and the daemon: async functions over
//! a [`Ctx`] that return `portwarden-api` documents. They call the adapters (net, nft,
//! os, store) and core; they never print (what a user should hear goes to
//! [`Ctx::notes`]) and never read the wall clock but through [`Ctx::clock`].
//!
//! Async where the work is network I/O (`check`, `scan`, `report`); plain functions where
//! it is SQLite, netlink and `nft` (leases, inventory, firewall, ledger), which the
//! daemon runs on a blocking thread.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub mod balance;
pub mod bench;
pub mod change;
pub mod check;
pub mod facts;
pub mod files;
pub mod fw;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod log;
pub mod policy;
pub mod report;
pub mod scan;
pub mod store;
pub mod storm;
pub mod token;

/// The wall clock, injected so a test can set it.
pub trait Clock: Send + Sync {
    /// Unix seconds.
    fn now(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A clock that moves only when told: tests step it past a lease's TTL or a deadline
/// instead of sleeping.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock standing at `secs`.
    pub fn at(secs: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(secs)))
    }

    /// Moves it by `secs` (negative: back).
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where a use-case says what a user should hear besides its document: warnings, detail
/// for `-v`, and the end of a progress display.
pub trait Notes: Send + Sync {
    /// Something went less well than asked, and what was done instead.
    fn warn(&self, msg: &str);
    /// Detail, shown with `-v`.
    fn verbose(&self, msg: &str);
    /// The progress display (fed through [`Ctx::progress`]) is done.
    fn progress_done(&self) {}
}

/// Notes nobody hears (tests, callers that want the document only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Notes for Silent {
    fn warn(&self, _: &str) {}
    fn verbose(&self, _: &str) {}
}

/// What every use-case runs with.
#[derive(Clone)]
pub struct Ctx {
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Warnings and detail.
    pub notes: Arc<dyn Notes>,
    /// Progress: (done, total).
    pub progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    /// Set (by a signal handler, or the daemon's shutdown) to stop a long operation
    /// cleanly; static, because a signal handler can only reach a static.
    pub stop: &'static AtomicBool,
    /// Who acts, as the ledger records it (`root (uid 0, sudo from alice)`).
    pub actor: String,
    /// The policy already loaded, when the caller holds one (the daemon): use-cases run
    /// under it instead of reading their `policy` path.
    pub policy: Option<Arc<policy::LoadedPolicy>>,
}

impl Ctx {
    /// A context with the system clock, no notes and no progress display.
    pub fn quiet(stop: &'static AtomicBool) -> Ctx {
        Ctx {
            clock: Arc::new(SystemClock),
            notes: Arc::new(Silent),
            progress: Arc::new(|_, _| {}),
            stop,
            actor: "unknown".into(),
            policy: None,
        }
    }
}
