//! The stores, in two traits: [`LeaseStore`] (async, optimistic: what a fleet shares;
//! SQLite now, etcd with the fleet) and [`Journal`] (host-local: the hash-chained ledger,
//! port identities, firewall transactions and grants). [`SqliteStore`] is the embedded
//! default of both. Knows no policy rules: callers pass decisions in as closures.
#![deny(missing_docs)]

pub mod anchor;
pub mod key;
pub mod ledger;
mod sqlite;
pub mod trust;

use std::path::PathBuf;

use portwarden_core::alloc::{AllocError, LeaseState, LeaseView, ReclaimAction};
use portwarden_core::{Port, Protocol};
use serde::Serialize;

pub use ledger::{Change, Entry, Verification};
pub use sqlite::{DB_FILE, SqliteStore};

/// A port lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Unique id.
    pub id: i64,
    /// Allocation scope: this host, or a fleet scope.
    pub scope: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
    /// Service it serves.
    pub service: String,
    /// Pool it came from.
    pub pool: Option<String>,
    /// Who holds it (release and renew check this).
    pub owner: String,
    /// Executable expected to listen on it.
    pub process: Option<String>,
    /// Lifecycle state.
    pub state: LeaseState,
    /// Creation, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// Last time a listener was seen on the port.
    pub last_seen_listening: Option<i64>,
    /// Consecutive observations without a listener.
    pub missed: u32,
    /// The longest lifetime a renewal may give it, in seconds.
    pub ttl_max: Option<i64>,
    /// The host key's MAC of its fixed part (`SqliteStore::vouches_lease`).
    #[serde(skip)]
    pub mac: Option<String>,
}

impl Lease {
    /// The parts the lifecycle rules read.
    pub fn view(&self) -> LeaseView {
        LeaseView {
            id: self.id,
            pool: self.pool.clone(),
            state: self.state,
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_seen_listening: self.last_seen_listening,
            missed: self.missed,
        }
    }
}

/// A lease to create.
#[derive(Debug, Clone)]
pub struct NewLease {
    /// Scope.
    pub scope: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
    /// Service.
    pub service: String,
    /// Pool.
    pub pool: Option<String>,
    /// Owner.
    pub owner: String,
    /// Expected executable.
    pub process: Option<String>,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// The longest lifetime a renewal may give it, in seconds (its pool's `lease_ttl`
    /// when it was allocated): kept so `renew` caps it without the policy at hand.
    pub ttl_max: Option<i64>,
}

/// Lets an allocation decision ask whether a port is already leased, inside the store's
/// transaction.
pub trait LeaseProbe {
    /// Whether (scope, protocol, port) is leased.
    fn is_leased(&mut self, protocol: Protocol, port: Port) -> bool;
}

/// Store failures. None of them leaves partial state behind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No lease with that id.
    #[error("no lease with id {0}")]
    NotFound(i64),
    /// The caller does not own the lease.
    #[error("lease {id} belongs to `{owner}`, not `{caller}`")]
    NotOwner {
        /// Lease id.
        id: i64,
        /// Its owner.
        owner: String,
        /// Who asked.
        caller: String,
    },
    /// The allocation decision refused.
    #[error(transparent)]
    Refused(#[from] AllocError),
    /// The database file belongs to something else.
    #[error("{path} is not a portwarden store (application id {app_id:#x}); refusing to touch it")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its SQLite application id.
        app_id: i64,
    },
    /// The database file is damaged or not a database.
    #[error("{path} is not a usable database: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        reason: String,
    },
    /// A newer portwarden wrote this store.
    #[error(
        "{path} has schema version {found}, newer than this portwarden understands ({supported})"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// A firewall transaction is still pending.
    #[error(
        "firewall transaction {0} is pending: `portwarden fw confirm` or `portwarden fw rollback` first"
    )]
    Pending(i64),
    /// Something of that name exists already.
    #[error("{0}")]
    Exists(String),
    /// A row the host key does not vouch for.
    #[error("{0}")]
    Altered(String),
    /// A change request cannot take that step.
    #[error("change {id}: {cause}")]
    Change {
        /// The request.
        id: i64,
        /// Why not.
        cause: portwarden_core::change::ChangeError,
    },
    /// A change request reviewed or applied against another version than the one in
    /// force now: it has expired (on the record).
    #[error("{0}")]
    Stale(String),
    /// No such change request.
    #[error("no change request {0} (`portwarden change list` lists them)")]
    NoChange(i64),
    /// No policy version matches, or several do.
    #[error("{0}")]
    NoVersion(String),
    /// The store does not exist yet.
    #[error("no store at {0} yet")]
    Missing(PathBuf),
    /// The state directory or a store file may be written by someone other than root.
    #[error("{0}")]
    Untrusted(String),
    /// The ledger is behind its head anchor: records were deleted or the database was
    /// replaced. Nothing is written until an operator looks.
    #[error("{0}")]
    Truncated(String),
    /// The store is on read-only media or not writable by us.
    #[error("{path} is read-only (read-only media, or no write permission): cannot record changes")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The snapshot of a firewall transaction differs from the one its apply recorded.
    #[error(
        "the rollback snapshot of firewall transaction {id} does not match the SHA-256 its apply recorded in the ledger (recorded {recorded}, found {found}): refusing to load it"
    )]
    SnapshotTampered {
        /// Transaction.
        id: i64,
        /// Hash in the ledger.
        recorded: String,
        /// Hash of what the store holds now.
        found: String,
    },
    /// The transaction's apply record carries no valid MAC of this host's key: it was
    /// not made here (forged in the store, restored from a backup, copied from another
    /// host, or written before keys existed).
    #[error(
        "firewall transaction {id} is not vouched for by this host's key ({why}): it was not applied by portwarden on this host, so its rollback snapshot is never loaded"
    )]
    SnapshotUnvouched {
        /// Transaction.
        id: i64,
        /// What is wrong.
        why: String,
    },
    /// File system trouble.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause (in the message, so not also a `source`: a chain would say it twice).
        cause: std::io::Error,
    },
    /// The database engine failed.
    #[error("store: {0}")]
    Backend(String),
}

/// What reclaim did (or, in a dry run, would do) to one lease.
#[derive(Debug, Clone, Serialize)]
pub struct Reclaimed {
    /// The lease before.
    pub lease: Lease,
    /// The action.
    pub action: ReclaimAction,
}

/// The executable last seen listening on a managed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
    /// Executable path.
    pub exe: String,
    /// SHA-256 of the executable.
    pub sha256: Option<String>,
    /// First seen with this identity, unix seconds.
    pub first_seen: i64,
    /// Last seen, unix seconds.
    pub last_seen: i64,
}

/// Where a firewall transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FwState {
    /// Applied, waiting for `fw confirm` before its deadline.
    Pending,
    /// Confirmed (or applied without confirmation).
    Confirmed,
    /// Rolled back to the snapshot.
    RolledBack,
}

/// One `fw apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FwTxn {
    /// Id.
    pub id: i64,
    /// When applied, unix seconds.
    pub created: i64,
    /// Rollback deadline, unix seconds (`None`: no confirmation needed).
    pub deadline: Option<i64>,
    /// State.
    pub state: FwState,
    /// The table before (nft's listing), `None` when there was none.
    pub snapshot: Option<String>,
    /// The ruleset applied.
    pub ruleset: String,
    /// nft's listing right after applying, for drift detection.
    pub listing: Option<String>,
    /// Who applied it.
    pub actor: String,
    /// The ledger record of the apply.
    pub ledger_seq: Option<i64>,
    /// The rollback watcher's process id, while one is armed.
    pub watcher_pid: Option<u32>,
}

/// A time-limited firewall grant, kept in the store so that an apply re-adds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRecord {
    /// Source address (IPv4-mapped addresses are stored as IPv4).
    pub addr: std::net::IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// Who granted it.
    pub actor: String,
}

/// An API token of the daemon: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Its name: the actor the ledger records for its requests.
    pub name: String,
    /// What it may do.
    pub role: portwarden_core::auth::Role,
    /// SHA-256 of the secret, lowercase hex.
    pub sha256: String,
    /// When it was made, unix seconds.
    pub created_at: i64,
    /// Who made it.
    pub actor: String,
}

/// The version of a policy's text: its SHA-256, lowercase hex.
pub fn policy_version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    ledger::hex(&Sha256::digest(text.as_bytes()))
}

/// A policy's text, kept by the SHA-256 of that text (its version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyVersion {
    /// SHA-256 of the text, lowercase hex.
    pub hash: String,
    /// The policy file as it was.
    pub text: String,
    /// When it was first kept, unix seconds.
    pub first_seen: i64,
    /// Who first adopted it.
    pub author: String,
}

/// One adoption of a policy version: a firewall apply, a daemon's start or SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyAdoption {
    /// Its number, in order.
    pub id: i64,
    /// The version adopted.
    pub hash: String,
    /// The version in force before (`None`: the first).
    pub previous: Option<String>,
    /// When, unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// How: `fw apply`, `serve`, `change apply` …
    pub how: String,
    /// The file it was read from.
    pub source: String,
    /// Why, when someone said.
    pub reason: Option<String>,
    /// The firewall transaction that applied it, if one did.
    pub txn: Option<i64>,
    /// That transaction's state: `pending`, `confirmed` or `rolled-back` (a rolled-back
    /// adoption is not in force).
    pub txn_state: Option<String>,
    /// Its ledger record.
    pub seq: i64,
    /// Whether this host's key vouches for it (a row edited or written by hand is not,
    /// and is never the version in force).
    pub vouched: bool,
}

/// A change request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeRecord {
    /// Its number.
    pub id: i64,
    /// Where it stands, and what the state machine needs to step it.
    pub change: portwarden_core::change::Change,
    /// Why it was asked for.
    pub reason: String,
    /// A ticket in the operator's tracker.
    pub ticket: Option<String>,
    /// The proposed version.
    pub version: String,
    /// The version in force when it was asked for (a change to another one is stale).
    pub base: Option<String>,
    /// The file it was read from.
    pub source: String,
    /// The pre-flight's report (JSON), as made when it was asked for.
    pub preflight: String,
    /// The firewall transaction that applied it.
    pub txn: Option<i64>,
    /// When it was asked for (unix seconds).
    pub created: i64,
    /// When it last changed.
    pub updated: i64,
    /// Whether this host's key vouches for the row as its last recorded step left it (a
    /// row edited or written by hand is not, and no step is taken with it).
    pub vouched: bool,
}

/// A change request to store: [`Journal::change_create`].
#[derive(Debug, Clone, Copy)]
pub struct NewChange<'a> {
    /// Who asks.
    pub requester: &'a str,
    /// Why.
    pub reason: &'a str,
    /// A ticket, if any.
    pub ticket: Option<&'a str>,
    /// The proposed policy's text.
    pub text: &'a str,
    /// The file it was read from.
    pub source: &'a str,
    /// The version in force now.
    pub base: Option<&'a str>,
    /// Approvals needed.
    pub needed: u32,
    /// Whether applying requires them.
    pub require_approval: bool,
    /// The pre-flight's report (JSON).
    pub preflight: &'a str,
}

/// An adoption to record: [`Journal::policy_adopt`].
#[derive(Debug, Clone, Copy)]
pub struct NewAdoption<'a> {
    /// Who.
    pub actor: &'a str,
    /// How: `fw apply`, `serve` …
    pub how: &'a str,
    /// The file it was read from.
    pub source: &'a str,
    /// The policy's text.
    pub text: &'a str,
    /// Why, when someone said.
    pub reason: Option<&'a str>,
    /// The firewall transaction that applied it.
    pub txn: Option<i64>,
}

/// What stays on this host whatever stores the leases: the hash-chained ledger, the
/// identities of managed ports, firewall transactions and grants. Synchronous: SQLite.
pub trait Journal {
    /// Records a firewall apply (pending when it has a deadline); refuses while another is
    /// pending.
    fn fw_begin(
        &mut self,
        now: i64,
        actor: &str,
        deadline: Option<i64>,
        snapshot: Option<String>,
        ruleset: &str,
    ) -> Result<FwTxn, StoreError>;

    /// Stores nft's listing of the table right after an apply.
    fn fw_set_listing(&mut self, id: i64, listing: &str) -> Result<(), StoreError>;

    /// Records the process id of a transaction's rollback watcher (`None`: none armed).
    fn fw_set_watcher(&mut self, id: i64, pid: Option<u32>) -> Result<(), StoreError>;

    /// The transaction's snapshot, after checking its SHA-256 against the one its apply
    /// recorded in the ledger (`SnapshotTampered` when they differ).
    fn fw_verified_snapshot(&self, t: &FwTxn) -> Result<Option<String>, StoreError>;

    /// Unexpired grants (`expires_at > now`).
    fn grants(&self, now: i64) -> Result<Vec<GrantRecord>, StoreError>;

    /// Records grants (replacing the expiry of an existing one) with one ledger record
    /// each, in one transaction.
    fn grant(&mut self, now: i64, grants: &[GrantRecord]) -> Result<(), StoreError>;

    /// Deletes grants, one ledger record each, in one transaction.
    fn revoke(
        &mut self,
        now: i64,
        actor: &str,
        keys: &[(std::net::IpAddr, Protocol, Port)],
    ) -> Result<(), StoreError>;

    /// Every firewall transaction, oldest first.
    fn fw_txns(&self) -> Result<Vec<FwTxn>, StoreError>;

    /// Moves a pending transaction to `to`; `false` when it was no longer pending.
    fn fw_finish(
        &mut self,
        id: i64,
        to: FwState,
        now: i64,
        actor: &str,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Appends several ledger records in one transaction.
    fn record_batch(&mut self, now: i64, changes: Vec<Change>) -> Result<usize, StoreError>;

    /// The recorded identities of managed ports.
    fn identities(&self) -> Result<Vec<Identity>, StoreError>;

    /// Records what owns each managed port now; a different executable or digest than
    /// recorded is written to the ledger (`identity.changed`) and returned as (old, new).
    fn record_identities(
        &mut self,
        seen: &[Identity],
        now: i64,
        actor: &str,
    ) -> Result<Vec<(Identity, Identity)>, StoreError>;

    /// Appends a record to the ledger (for changes made elsewhere: firewall, policy).
    fn record(&mut self, now: i64, change: Change) -> Result<Entry, StoreError>;

    /// Ledger records with `ts >= since`, oldest first.
    fn ledger(&self, since: Option<i64>) -> Result<Vec<Entry>, StoreError>;

    /// Walks the whole chain, and checks it against the head anchor, an exported head
    /// (`expect`: seq and hash), the append-only triggers and the ledger references of
    /// leases and firewall transactions.
    fn verify_ledger_expecting(
        &self,
        expect: Option<(i64, &str)>,
    ) -> Result<Verification, StoreError>;

    /// [`Journal::verify_ledger_expecting`] without an exported head.
    fn verify_ledger(&self) -> Result<Verification, StoreError> {
        self.verify_ledger_expecting(None)
    }

    /// Re-creates dropped append-only triggers and closes an open retention gate, with a
    /// ledger record; returns what was repaired.
    fn repair_ledger(&mut self, now: i64, actor: &str) -> Result<Vec<String>, StoreError>;

    /// Stores a new API token (`Exists` when the name is taken), with its ledger record.
    fn token_create(&mut self, now: i64, t: &TokenRecord) -> Result<(), StoreError>;

    /// Every API token, by name.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// The token whose secret hashes to `sha256`, if its row is vouched for by this
    /// host's key (a row written into the database by hand opens nothing).
    fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Deletes a token, with its ledger record; `false` when there was none of that name.
    fn token_revoke(&mut self, now: i64, actor: &str, name: &str) -> Result<bool, StoreError>;

    /// Records that a policy's text is now in force, keeping the text by its hash, with a
    /// `policy.adopt` ledger record naming the version and the one in force before (the
    /// last adoption not rolled back). `None` (and nothing recorded) when it is that one
    /// and no firewall transaction applied it again.
    fn policy_adopt(
        &mut self,
        now: i64,
        a: NewAdoption<'_>,
    ) -> Result<Option<PolicyAdoption>, StoreError>;

    /// The version in force: the last adoption not rolled back.
    fn policy_current(&self) -> Result<Option<PolicyAdoption>, StoreError>;

    /// Every adoption, oldest first.
    fn policy_history(&self) -> Result<Vec<PolicyAdoption>, StoreError>;

    /// Stores a change request (its proposed text as a version), with its
    /// `change.request` ledger record.
    fn change_create(&mut self, now: i64, c: NewChange<'_>) -> Result<ChangeRecord, StoreError>;

    /// One change request.
    fn change_get(&self, id: i64) -> Result<Option<ChangeRecord>, StoreError>;

    /// Every change request, oldest first.
    fn changes(&self) -> Result<Vec<ChangeRecord>, StoreError>;

    /// Steps a change request by `event` (core's `change::step`), with a
    /// `change.EVENT` ledger record naming the versions; `txn` is the firewall
    /// transaction of a `Loaded`. An illegal step is refused (`Change`) and the refusal
    /// is recorded (`change.refused`); nothing else changes.
    fn change_step(
        &mut self,
        now: i64,
        id: i64,
        actor: &str,
        event: &portwarden_core::change::ChangeEvent,
        reason: Option<&str>,
        txn: Option<i64>,
    ) -> Result<ChangeRecord, StoreError>;

    /// The version whose hash is, or starts with, `hash` (at least 6 hex digits;
    /// `NoVersion` when none or several match).
    fn policy_version(&self, hash: &str) -> Result<PolicyVersion, StoreError>;

    /// Deletes records older than `cutoff` after writing a checkpoint the chain verifies
    /// through; returns how many were deleted.
    ///
    /// Only the leading run of records older than `cutoff` goes: the first record at or
    /// after it ends the cut, whatever older timestamps follow.
    fn prune_ledger(&mut self, cutoff: i64, now: i64, actor: &str) -> Result<i64, StoreError>;
}

/// Leases: what a fleet shares (SQLite on one host, [`SqliteLeases`]; etcd across many).
///
/// Async, and optimistic: `allocate` may call `decide` more than once. It reads the
/// leased set, lets `decide` pick through the [`LeaseProbe`], and commits only if no one
/// claimed the port meanwhile; on a conflict it asks again. `decide` must therefore only
/// decide (its side effects may repeat). Each operation writes its ledger record with it,
/// or nothing.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    /// Creates a lease chosen by `decide`; the lease and its ledger record are written
    /// together, or nothing is.
    async fn allocate(
        &self,
        now: i64,
        actor: &str,
        decide: &mut (
                 dyn for<'p> FnMut(&'p mut dyn LeaseProbe) -> Result<NewLease, AllocError> + Send
             ),
    ) -> Result<Lease, StoreError>;

    /// Every lease, by port.
    async fn leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Extends a lease the caller (its owner label) holds.
    async fn renew(
        &self,
        id: i64,
        caller: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError>;

    /// Deletes a lease the caller holds.
    async fn release(
        &self,
        id: i64,
        caller: &str,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError>;

    /// Records one inventory observation per lease (`listening` says whether its port has
    /// a listener), then applies what `decide` returns for each, together. With `dry_run`
    /// nothing is written.
    async fn reclaim(
        &self,
        now: i64,
        actor: &str,
        listening: &(dyn for<'l> Fn(&'l Lease) -> bool + Sync),
        decide: &(dyn for<'l> Fn(&'l Lease, bool) -> Option<ReclaimAction> + Sync),
        dry_run: bool,
    ) -> Result<Vec<Reclaimed>, StoreError>;
}

/// The embedded store's leases as a [`LeaseStore`]. SQLite decides inside one immediate
/// transaction, so `decide` runs once; the calls are short and block the calling thread
/// (a daemon runs them on a blocking thread).
pub struct SqliteLeases(std::sync::Mutex<SqliteStore>);

impl SqliteLeases {
    /// Wraps an open store.
    pub fn new(store: SqliteStore) -> SqliteLeases {
        SqliteLeases(std::sync::Mutex::new(store))
    }

    /// The store back.
    pub fn into_inner(self) -> SqliteStore {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SqliteStore> {
        // A panic while holding it left no half-done transaction (SQLite rolled back).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl LeaseStore for SqliteLeases {
    async fn allocate(
        &self,
        now: i64,
        actor: &str,
        decide: &mut (
                 dyn for<'p> FnMut(&'p mut dyn LeaseProbe) -> Result<NewLease, AllocError> + Send
             ),
    ) -> Result<Lease, StoreError> {
        self.lock().allocate(now, actor, decide)
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.lock().leases()
    }

    async fn renew(
        &self,
        id: i64,
        caller: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
        self.lock().renew(id, caller, expires_at, now, actor)
    }

    async fn release(
        &self,
        id: i64,
        caller: &str,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
        self.lock().release(id, caller, now, actor)
    }

    async fn reclaim(
        &self,
        now: i64,
        actor: &str,
        listening: &(dyn for<'l> Fn(&'l Lease) -> bool + Sync),
        decide: &(dyn for<'l> Fn(&'l Lease, bool) -> Option<ReclaimAction> + Sync),
        dry_run: bool,
    ) -> Result<Vec<Reclaimed>, StoreError> {
        self.lock().reclaim(now, actor, listening, decide, dry_run)
    }
}

/// Where the embedded store lives when `--state-dir` is not given: `/var/lib/portwarden`
/// for root, else `$XDG_STATE_HOME/portwarden` (or `~/.local/state/portwarden`).
pub fn default_state_dir(
    is_root: bool,
    xdg_state_home: Option<&str>,
    home: Option<&str>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/portwarden");
    }
    match (xdg_state_home.filter(|s| !s.is_empty()), home) {
        (Some(x), _) => PathBuf::from(x).join("portwarden"),
        (None, Some(h)) => PathBuf::from(h).join(".local/state/portwarden"),
        (None, None) => PathBuf::from(".portwarden"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_follows_design() {
        assert_eq!(
            default_state_dir(true, Some("/x"), None),
            PathBuf::from("/var/lib/portwarden")
        );
        assert_eq!(
            default_state_dir(false, Some("/x"), Some("/h")),
            PathBuf::from("/x/portwarden")
        );
        assert_eq!(
            default_state_dir(false, None, Some("/h")),
            PathBuf::from("/h/.local/state/portwarden")
        );
    }
}
