//! The embedded store: SQLite in WAL mode. Every mutation runs in a `BEGIN IMMEDIATE`
//! transaction and appends its ledger record in the same transaction. One row per
//! (scope, protocol, port) makes a double claim a constraint violation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portwarden_core::alloc::{AllocError, LeaseState, ReclaimAction};
use portwarden_core::{Port, Protocol};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::anchor::{Anchor, Head};
use crate::ledger::{self, CHECKPOINT, Change, Checkpoint, Entry, GENESIS, Verification};
use crate::{
    ChangeRecord, FwState, FwTxn, GrantRecord, Identity, Journal, Lease, LeaseProbe, NewAdoption,
    NewChange, NewLease, PolicyAdoption, PolicyVersion, Reclaimed, StoreError, TokenRecord,
};

/// SQLite `application_id` of a portwarden store: "PWRD".
pub const APPLICATION_ID: i64 = 0x5057_5244;
/// Current schema version (`user_version`).
pub const SCHEMA_VERSION: i64 = 7;
/// File name inside the state directory.
pub const DB_FILE: &str = "portwarden.db";

const SCHEMA_V1: &str = r#"
CREATE TABLE leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    service TEXT NOT NULL,
    pool TEXT,
    owner TEXT NOT NULL,
    process TEXT,
    state TEXT NOT NULL CHECK (state IN ('planned', 'active', 'draining')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_seen_listening INTEGER,
    missed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (scope, protocol, port)
);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    before TEXT,
    after TEXT,
    reason TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX ledger_ts ON ledger (ts);
CREATE TABLE ledger_gate (id INTEGER PRIMARY KEY CHECK (id = 1), open INTEGER NOT NULL);
INSERT INTO ledger_gate VALUES (1, 0);
"#;

/// The ledger's append-only triggers (created with version 1; `log verify --repair`
/// re-creates them if someone dropped them).
const TRIGGERS: &str = r#"
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
WHEN (SELECT open FROM ledger_gate WHERE id = 1) = 0
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"#;
const TRIGGER_NAMES: [&str; 2] = ["ledger_no_update", "ledger_no_delete"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TriggerState {
    Intact,
    Missing,
    Changed,
}

/// Triggers portwarden did not create, as (name, table): any of them can drop, change
/// or add rows (a `RAISE(IGNORE)` before an insert into the ledger loses records
/// without a trace), so each is a verify problem and `--repair` drops it.
fn foreign_triggers(c: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut st = c
        .prepare("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
        .map_err(backend)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(backend)?;
    let mut out = Vec::new();
    for r in rows {
        let (name, table) = r.map_err(backend)?;
        if !TRIGGER_NAMES.contains(&name.as_str()) {
            out.push((name, table));
        }
    }
    Ok(out)
}

/// Each append-only trigger: there with the SQL we created it with (SQLite keeps the
/// statement without `IF NOT EXISTS`), missing, or there with other SQL (a trigger of
/// the same name that refuses nothing).
fn trigger_states(c: &Connection) -> Result<Vec<(&'static str, TriggerState)>, StoreError> {
    let norm = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let expected: Vec<String> = TRIGGERS
        .split("END;")
        .filter(|t| !t.trim().is_empty())
        .map(|t| norm(&format!("{} END", t.replacen("IF NOT EXISTS ", "", 1))))
        .collect();
    let mut out = Vec::new();
    for (i, name) in TRIGGER_NAMES.iter().enumerate() {
        let sql: Option<Option<String>> = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let state = match sql.flatten() {
            None => TriggerState::Missing,
            Some(s) if expected.get(i).is_some_and(|e| *e == norm(&s)) => TriggerState::Intact,
            Some(_) => TriggerState::Changed,
        };
        out.push((*name, state));
    }
    Ok(out)
}

/// Version 2: the last executable seen on each managed port, for hijack detection.
const SCHEMA_V2: &str = r#"
CREATE TABLE identities (
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    exe TEXT NOT NULL,
    sha256 TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (protocol, port)
);
"#;

/// Version 3: firewall transactions (commit-confirm).
const SCHEMA_V3: &str = r#"
CREATE TABLE fw_txn (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created INTEGER NOT NULL,
    deadline INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'rolled-back')),
    snapshot TEXT,
    ruleset TEXT NOT NULL,
    listing TEXT,
    actor TEXT NOT NULL
);
"#;

/// Version 4: grants as state, ledger references, the rollback watcher's pid.
const SCHEMA_V4: &str = r#"
ALTER TABLE leases ADD COLUMN ledger_seq INTEGER;
ALTER TABLE fw_txn ADD COLUMN ledger_seq INTEGER;
ALTER TABLE fw_txn ADD COLUMN watcher_pid INTEGER;
CREATE TABLE grants (
    addr TEXT NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    expires_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (addr, protocol, port)
);
"#;

/// Version 5: a lease's renewal cap, and the host key's MACs of grant and lease rows;
/// from this version on a missing head anchor or key is damage (the migration adopts
/// both, on the record).
const SCHEMA_V5_COLUMNS: [(&str, &str, &str); 3] = [
    ("leases", "ttl_max", "INTEGER"),
    ("leases", "mac", "TEXT"),
    ("grants", "mac", "TEXT"),
];

/// Version 6: the daemon's API tokens (the SHA-256 of each secret, never the secret),
/// each row MACed by the host key.
const SCHEMA_V6: &str = r#"
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('read', 'operate', 'admin')),
    sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    mac TEXT
);
"#;

/// Version 7: policy versions (the text by its SHA-256: the hash vouches for the text,
/// the ledger record of each adoption for the hash) and their adoptions.
const SCHEMA_V7: &str = r#"
CREATE TABLE IF NOT EXISTS policy_versions (
    hash TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    author TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policy_adoptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL REFERENCES policy_versions(hash),
    previous TEXT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    how TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT,
    txn INTEGER,
    seq INTEGER NOT NULL,
    mac TEXT
);
CREATE TABLE IF NOT EXISTS change_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    requester TEXT NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT,
    version TEXT NOT NULL REFERENCES policy_versions(hash),
    base TEXT,
    source TEXT NOT NULL,
    approvals TEXT NOT NULL,
    needed INTEGER NOT NULL,
    require_approval INTEGER NOT NULL,
    confirm_by INTEGER,
    txn INTEGER,
    preflight TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    mac TEXT
);
"#;

const CHANGE_COLS: &str = "id, state, requester, reason, ticket, version, base, source, approvals, needed, require_approval, confirm_by, txn, preflight, created, updated";
const CHANGE_READ: &str = "id, state, requester, reason, ticket, version, base, source, approvals, needed, require_approval, confirm_by, txn, preflight, created, updated, mac";

/// The host key's MAC of a change request's reviewed fields, bound to the ledger record
/// of its last step (`SEQ:HEX`).
fn change_mac(k: &crate::key::HostKey, seq: i64, r: &ChangeRecord) -> String {
    let m = k.mac(
        format!(
            "portwarden change\n{seq}\n{}\n{}\n{}\n{}\n{}\n{:?}\n{}\n{}\n{:?}\n{:?}",
            r.id,
            r.change.state,
            r.change.requester,
            serde_json::to_string(&r.change.approvals).unwrap_or_default(),
            r.version,
            r.base,
            r.change.needed,
            r.change.require_approval,
            r.change.confirm_by,
            r.txn,
        )
        .as_bytes(),
    );
    format!("{seq}:{m}")
}

/// The host key's MAC of an adoption, bound to its ledger record.
fn adoption_mac(k: &crate::key::HostKey, a: &PolicyAdoption) -> String {
    let m = k.mac(
        format!(
            "portwarden adoption\n{}\n{}\n{}\n{:?}\n{:?}",
            a.seq, a.id, a.hash, a.previous, a.txn
        )
        .as_bytes(),
    );
    format!("{}:{m}", a.seq)
}

/// The last ledger record about `subject`.
fn last_seq_of(c: &Connection, subject: &str) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT max(seq) FROM ledger WHERE subject = ?1",
        [subject],
        |r| r.get(0),
    )
}

fn change_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChangeRecord> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let state: String = r.get(1)?;
    let approvals: String = r.get(8)?;
    Ok(ChangeRecord {
        id: r.get(0)?,
        change: portwarden_core::change::Change {
            state: state.parse().map_err(|e: String| bad(1, e))?,
            requester: r.get(2)?,
            approvals: serde_json::from_str(&approvals).map_err(|e| bad(8, e.to_string()))?,
            needed: r.get(9)?,
            require_approval: r.get(10)?,
            confirm_by: r.get(11)?,
        },
        reason: r.get(3)?,
        ticket: r.get(4)?,
        version: r.get(5)?,
        base: r.get(6)?,
        source: r.get(7)?,
        txn: r.get(12)?,
        preflight: r.get(13)?,
        created: r.get(14)?,
        updated: r.get(15)?,
        vouched: false,
    })
}

/// A change row, and whether the host key vouches for it as its last step left it.
fn change_checked(
    c: &Connection,
    key: Option<&crate::key::HostKey>,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<ChangeRecord> {
    let mut rec = change_row(r)?;
    let mac: Option<String> = r.get(16)?;
    rec.vouched = match (key, mac) {
        (Some(k), Some(mac)) => {
            let last = last_seq_of(c, &format!("change:{}", rec.id))?;
            mac_seq(&mac).is_some_and(|seq| Some(seq) == last && change_mac(k, seq, &rec) == mac)
        }
        _ => false,
    };
    Ok(rec)
}

fn change_by_id(
    c: &Connection,
    key: Option<&crate::key::HostKey>,
    id: i64,
) -> rusqlite::Result<Option<ChangeRecord>> {
    c.query_row(
        &format!("SELECT {CHANGE_READ} FROM change_requests WHERE id = ?1"),
        [id],
        |r| change_checked(c, key, r),
    )
    .optional()
}

/// Seals a change row as it is now, bound to its last ledger record `seq`.
fn seal_change(
    c: &Connection,
    key: Option<&crate::key::HostKey>,
    id: i64,
    seq: i64,
) -> Result<(), StoreError> {
    let Some(k) = key else { return Ok(()) };
    let Some(rec) = change_by_id(c, None, id).map_err(backend)? else {
        return Err(StoreError::NoChange(id));
    };
    c.execute(
        "UPDATE change_requests SET mac = ?2 WHERE id = ?1",
        params![id, change_mac(k, seq, &rec)],
    )
    .map_err(backend)?;
    Ok(())
}

/// Who takes a change request's step, which, why, and the transaction it names.
struct Step<'a> {
    actor: &'a str,
    event: &'a portwarden_core::change::ChangeEvent,
    reason: Option<&'a str>,
    txn: Option<i64>,
}

/// Writes a step core's `change::step` allowed: the row as `next`, its `change.EVENT`
/// ledger record (from `row`'s state to `next`'s), and the row's seal on that record.
fn write_step(
    tx: &rusqlite::Transaction<'_>,
    key: Option<&crate::key::HostKey>,
    now: i64,
    row: &ChangeRecord,
    next: &portwarden_core::change::Change,
    step: Step<'_>,
) -> Result<(), StoreError> {
    let approvals = serde_json::to_string(&next.approvals).map_err(|e| StoreError::Io {
        context: "change approvals".into(),
        cause: std::io::Error::other(e),
    })?;
    tx.execute(
        "UPDATE change_requests SET state = ?2, approvals = ?3, confirm_by = ?4, txn = coalesce(?5, txn), updated = ?6 WHERE id = ?1",
        params![row.id, next.state.as_str(), approvals, next.confirm_by, step.txn, now],
    )
    .map_err(backend)?;
    let e = append(
        tx,
        now,
        Change {
            actor: step.actor.to_string(),
            action: format!("change.{}", step.event.as_str()),
            subject: format!("change:{}", row.id),
            before: Some(change_word(row.change.state, &row.version)),
            after: Some(change_word(next.state, &row.version)),
            reason: step.reason.map(str::to_string),
        },
    )
    .map_err(backend)?;
    seal_change(tx, key, row.id, e.seq)
}

/// A change's state and versions, as its ledger records name them: `STATE VERSION`.
fn change_word(state: portwarden_core::change::ChangeState, version: &str) -> String {
    format!("{state} {version}")
}

/// The columns of an adoption, with its transaction's state (`a` the adoptions, `t`
/// fw_txn, left-joined).
const ADOPTION_COLS: &str = "a.id, a.hash, a.previous, a.at, a.actor, a.how, a.source, a.reason, a.txn, t.state, a.seq, a.mac";
const ADOPTION_FROM: &str = "policy_adoptions a LEFT JOIN fw_txn t ON t.id = a.txn";

fn adoption_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyAdoption> {
    Ok(PolicyAdoption {
        id: r.get(0)?,
        hash: r.get(1)?,
        previous: r.get(2)?,
        at: r.get(3)?,
        actor: r.get(4)?,
        how: r.get(5)?,
        source: r.get(6)?,
        reason: r.get(7)?,
        txn: r.get(8)?,
        txn_state: r.get(9)?,
        seq: r.get(10)?,
        vouched: false,
    })
}

/// Every adoption, oldest first, each with whether the host key vouches for it (and its
/// ledger record names its version).
fn adoptions(
    c: &Connection,
    key: Option<&crate::key::HostKey>,
) -> rusqlite::Result<Vec<PolicyAdoption>> {
    let mut st = c.prepare(&format!(
        "SELECT {ADOPTION_COLS}, l.subject FROM {ADOPTION_FROM} LEFT JOIN ledger l ON l.seq = a.seq ORDER BY a.id"
    ))?;
    let rows = st.query_map([], |r| {
        let mut a = adoption_row(r)?;
        let mac: Option<String> = r.get(11)?;
        let subject: Option<String> = r.get(12)?;
        a.vouched = match (key, mac) {
            (Some(k), Some(mac)) => {
                adoption_mac(k, &a) == mac && subject == Some(format!("policy:{}", a.hash))
            }
            _ => false,
        };
        Ok(a)
    })?;
    rows.collect()
}

/// The version in force: the last vouched-for adoption whose transaction was not rolled
/// back (a row edited or written by hand is passed over).
fn current_adoption(
    c: &Connection,
    key: Option<&crate::key::HostKey>,
) -> rusqlite::Result<Option<PolicyAdoption>> {
    Ok(adoptions(c, key)?
        .into_iter()
        .rev()
        .find(|a| a.vouched && a.txn_state.as_deref() != Some("rolled-back")))
}

use portwarden_core::change::short_hash;

/// Where a store's warnings go once a sink is set.
type WarningSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    scope: String,
    anchor: Anchor,
    /// Why writes are refused: the ledger is behind its anchor, or the anchor is gone.
    refused: Option<String>,
    /// The anchor of a store that had one is missing (`log verify --repair` adopts).
    anchor_missing: bool,
    read_only: bool,
    /// Where warnings go (a write that committed but could not move the anchor);
    /// kept until a sink is set.
    warn: Option<WarningSink>,
    warnings: Vec<String>,
    /// The host key (`None` on read-only media without one).
    key: Option<crate::key::HostKey>,
    /// Whether the key existed before this open: a directory that had one was used by a
    /// version that requires the anchor, so a migration never adopts one there.
    had_key: bool,
    /// The key of a store of this version is gone: writes are refused until
    /// `log verify --repair` makes a new one (on the record).
    key_missing: bool,
    /// Writes are refused only for what `--repair` fixes (a missing anchor or key).
    repairable: bool,
    /// Writes committed since the anchor last moved.
    dirty: bool,
    anchored: std::time::Instant,
    /// How far the anchor may lag behind the head ([`ANCHOR_LAG`]).
    anchor_lag: Duration,
}

/// How far (in time) the head anchor may lag behind the committed head while a process
/// writes; it always catches up when the store is closed. A lagging anchor only narrows
/// what truncation it can show, it never raises a false alarm.
const ANCHOR_LAG: Duration = Duration::from_secs(1);

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if self.dirty {
            // An anchor left behind weakens detection, it never misleads: say so.
            if let Err(e) = self.advance_anchor() {
                self.warning(format!(
                    "the changes are committed, but {e}: truncation of the newest records cannot be shown until it moves"
                ));
            }
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Short sleeps instead of SQLite's default back-off (which sleeps up to 100 ms and
/// collapses throughput when eight writers contend); gives up after about 60 s.
fn busy(count: i32) -> bool {
    if count > 200_000 {
        return false;
    }
    let jitter = (count as u64).wrapping_mul(2_654_435_761) % 200;
    std::thread::sleep(Duration::from_micros(50 + jitter));
    true
}

impl SqliteStore {
    /// Opens the store in `dir`, creating it when `create` is set. A foreign or corrupt
    /// file is refused without being modified.
    ///
    /// As root, a state directory or store file that someone else could write is refused
    /// (`Untrusted`). A database that is missing or empty while its head anchor exists is
    /// refused rather than re-initialised (`Truncated`). On read-only media the store opens
    /// read-only: reads work, writes fail with `ReadOnly`.
    pub fn open(dir: &Path, scope: &str, create: bool) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        let anchor = Anchor::new(dir);
        let euid = crate::trust::euid();
        if !dir.exists() && create {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Io {
                    context: format!("cannot create state directory {}", dir.display()),
                    cause: source,
                })?;
        }
        if let Some(why) = crate::trust::distrust(dir, euid, true) {
            return Err(StoreError::Untrusted(why));
        }
        for f in [
            DB_FILE.to_string(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            crate::anchor::ANCHOR_FILE.to_string(),
            crate::anchor::LOCK_FILE.to_string(),
            crate::key::KEY_FILE.to_string(),
        ] {
            if let Some(why) = crate::trust::distrust(&dir.join(f), euid, false) {
                return Err(StoreError::Untrusted(why));
            }
        }
        if let Some(why) = crate::trust::distrust_secret(&dir.join(crate::key::KEY_FILE), euid) {
            return Err(StoreError::Untrusted(why));
        }
        let empty = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        if empty && anchor.exists() {
            return Err(StoreError::Truncated(format!(
                "{} is {} but {} says a store was initialised here: refusing to start a new ledger over it; restore the database from a backup (or, if its loss is known and accepted, move the anchor aside)",
                path.display(),
                if path.exists() { "empty" } else { "missing" },
                anchor.path().display()
            )));
        }
        if !path.exists() {
            if !create {
                return Err(StoreError::Missing(path));
            }
            // Created by us, 0600, before SQLite sees it; a racing creator's file is fine.
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        context: format!("cannot create {}", path.display()),
                        cause: source,
                    });
                }
            }
        }
        let writable = dir_writable(dir) && file_writable(&path);
        let key = crate::key::HostKey::load(dir).map_err(|source| StoreError::Io {
            context: format!("cannot read the host key in {}", dir.display()),
            cause: source,
        })?;
        let had_key = key.is_some();
        let conn = if writable {
            Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        } else {
            // Read-only media: with no WAL file beside it the database is complete and can
            // be read as immutable; with one, SQLite reads both read-only.
            let wal = dir.join(format!("{DB_FILE}-wal")).exists();
            let uri = format!(
                "file:{}{}",
                uri_path(&path),
                if wal { "?mode=ro" } else { "?immutable=1" }
            );
            Connection::open_with_flags(
                uri,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }
        .map_err(|e| classify(&path, e))?;
        conn.busy_handler(Some(busy)).map_err(backend)?;
        let mut s = SqliteStore {
            conn,
            path,
            scope: scope.to_string(),
            anchor,
            refused: None,
            anchor_missing: false,
            read_only: !writable,
            warn: None,
            warnings: Vec::new(),
            key,
            had_key,
            key_missing: false,
            repairable: false,
            dirty: false,
            anchored: std::time::Instant::now(),
            anchor_lag: ANCHOR_LAG,
        };
        s.prepare()?;
        Ok(s)
    }

    /// Refuses a write when the ledger is behind its anchor or the store is read-only.
    fn writable(&self) -> Result<(), StoreError> {
        if let Some(why) = &self.refused {
            return Err(StoreError::Truncated(why.clone()));
        }
        if self.read_only {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The ledger's head as committed now.
    fn head(&self) -> Result<Head, StoreError> {
        let head: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        Ok(head.map_or(
            Head {
                seq: 0,
                hash: GENESIS.to_string(),
                pruned: None,
            },
            |(seq, hash)| Head {
                seq,
                hash,
                pruned: None,
            },
        ))
    }

    /// After every committed write: the anchor follows at most [`ANCHOR_LAG`] behind,
    /// and when the store is closed.
    ///
    /// The write has committed by then: an anchor that cannot move (a full disk) is a
    /// warning, never a failure, or a caller would retry what is already done.
    fn committed(&mut self) -> Result<(), StoreError> {
        self.dirty = true;
        if self.anchored.elapsed() >= self.anchor_lag {
            if let Err(e) = self.advance_anchor() {
                self.warning(format!(
                    "the change is committed, but {e}: truncation of the newest records cannot be shown until it moves"
                ));
            }
        }
        Ok(())
    }

    fn warning(&mut self, w: String) {
        match &self.warn {
            Some(f) => f(&w),
            None => self.warnings.push(w),
        }
    }

    /// Moves the anchor after every committed write instead of at most once per
    /// [`ANCHOR_LAG`] (tests, and a daemon that wants no lag at the cost of a write each).
    pub fn anchor_every_write(&mut self) {
        self.anchor_lag = Duration::ZERO;
    }

    /// Sends warnings (also those from opening) to `f`.
    pub fn on_warning(&mut self, f: impl Fn(&str) + Send + Sync + 'static) {
        for w in std::mem::take(&mut self.warnings) {
            f(&w);
        }
        self.warn = Some(std::sync::Arc::new(f));
    }

    /// Whether writes would be accepted (`ReadOnly`, `Truncated` otherwise): asked before
    /// a change outside the store that the store must then record.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.writable()
    }

    /// Moves the head anchor to the committed head. Under the anchor's lock: read the
    /// head, make the database durable up to it (fsync of the WAL and the main file, since
    /// `synchronous=NORMAL` does not sync on commit), then write the anchor; so the anchor
    /// never vouches for a record a power failure could still take away.
    fn advance_anchor(&mut self) -> Result<(), StoreError> {
        let r = self.anchor.advance(|| {
            let head = self
                .head()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            // Through SQLite, never through a descriptor of our own: closing another
            // descriptor of the database drops this process's POSIX locks on it, and
            // another process may then delete the WAL under us (leases were lost that
            // way). A checkpoint syncs the WAL before it copies frames, the database after.
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(head)
        });
        self.dirty = false;
        self.anchored = std::time::Instant::now();
        r.map_err(|source| StoreError::Io {
            context: format!(
                "cannot update the head anchor {}",
                self.anchor.path().display()
            ),
            cause: source,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks identity and version read-only, then initialises or migrates.
    fn prepare(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        // One statement, one snapshot: a creator committing between separate reads made a
        // half-seen store look foreign ("application id 0x0").
        let (app, ver, tables): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id), \
                        (SELECT user_version FROM pragma_user_version), \
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| classify(&path, e))?;
        if app != APPLICATION_ID && !(app == 0 && tables == 0) {
            return Err(StoreError::Foreign { path, app_id: app });
        }
        if ver > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: ver,
                supported: SCHEMA_VERSION,
            });
        }
        if tables > 0 {
            self.quick_check()?;
        }
        if self.read_only {
            if ver < SCHEMA_VERSION {
                return Err(StoreError::ReadOnly { path });
            }
            self.check_anchor()?;
            return Ok(());
        }
        // Switching to WAL takes an exclusive lock, and SQLite answers a racing first
        // open with SQLITE_BUSY without asking the busy handler: retry, bounded.
        let mut tries = 0;
        loop {
            let mode: rusqlite::Result<String> =
                self.conn
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0));
            match mode {
                Ok(_) => break,
                Err(e)
                    if tries < 2_000
                        && matches!(
                            e.sqlite_error_code(),
                            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(classify(&path, e)),
            }
        }
        // NORMAL in WAL: a commit survives a crash of any process; the last commits may
        // be lost on power failure (BENCHMARKS.md states this with the figures). The head
        // anchor syncs the files itself before it vouches for a record.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        // The key exists before a schema this version reads is committed, so an opener that
        // sees the schema sees the key. A store of this version without one lost it.
        // Evidence that this store was already at version 5 (its number set back since):
        // its key is then lost, not yet to be made.
        let v5_before: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('grants') WHERE name = 'mac'",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        if v5_before > 0 {
            self.had_key = true;
        }
        if self.key.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if ver < SCHEMA_VERSION && v5_before == 0 {
                self.key = Some(self.create_key()?);
            } else {
                // Made since this process looked (a racing first open), or lost.
                self.key = crate::key::HostKey::load(dir).ok().flatten();
                self.key_missing = self.key.is_none();
            }
        }
        let mut initialised = false;
        let mut adopt = false;
        let anchor_lock = if ver < SCHEMA_VERSION {
            Some(self.anchor.lock().map_err(|source| StoreError::Io {
                context: format!(
                    "cannot lock the head anchor {}",
                    self.anchor.path().display()
                ),
                cause: source,
            })?)
        } else {
            None
        };
        if ver < SCHEMA_VERSION {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(backend)?;
            // Another process may have initialised it while we waited.
            let ver: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(backend)?;
            if ver == 0 {
                if self.anchor.exists() {
                    return Err(StoreError::Truncated(format!(
                        "{} holds no portwarden schema but {} says a store was initialised here: refusing to start a new ledger over it; restore the database from a backup",
                        path.display(),
                        self.anchor.path().display()
                    )));
                }
                tx.execute_batch(SCHEMA_V1).map_err(backend)?;
                tx.execute_batch(TRIGGERS).map_err(backend)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(backend)?;
                initialised = true;
            }
            if ver < 2 {
                tx.execute_batch(SCHEMA_V2).map_err(backend)?;
            }
            if ver < 3 {
                tx.execute_batch(SCHEMA_V3).map_err(backend)?;
            }
            if ver < 4 {
                tx.execute_batch(SCHEMA_V4).map_err(backend)?;
            }
            if ver < 5 {
                // Column by column, so a store whose version number was set back (by
                // hand, or by an older binary's failed migration) still migrates.
                for (table, column, ty) in SCHEMA_V5_COLUMNS {
                    let there: i64 = tx
                        .query_row(
                            &format!(
                                "SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"
                            ),
                            [column],
                            |r| r.get(0),
                        )
                        .map_err(backend)?;
                    if there == 0 {
                        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty};"))
                            .map_err(backend)?;
                    }
                }
            }
            if ver < 6 {
                tx.execute_batch(SCHEMA_V6).map_err(backend)?;
            }
            if ver < 7 {
                tx.execute_batch(SCHEMA_V7).map_err(backend)?;
            }
            // Version 5: from now on a missing anchor is damage, not age. A store made
            // before anchors (or before they kept the pruned point) adopts one now, once,
            // on the record.
            if (1..5).contains(&ver) && !self.had_key {
                // Rows written before keys existed are vouched for once, here.
                if let Some(k) = &self.key {
                    vouch_rows(&tx, k)?;
                    append(
                        &tx,
                        unix_now(),
                        Change {
                            actor: "portwarden".into(),
                            action: "ledger.key-adopted".into(),
                            subject: "ledger".into(),
                            before: None,
                            after: None,
                            reason: Some(format!(
                                "schema {ver} to 5: a host key is made and the grants and leases as they are now are vouched for"
                            )),
                        },
                    )
                    .map_err(backend)?;
                }
                let missing = !self.anchor.exists();
                let old = self.anchor.read().ok().flatten();
                if missing || old.is_some_and(|a| a.pruned.is_none()) {
                    append(
                        &tx,
                        unix_now(),
                        Change {
                            actor: "portwarden".into(),
                            action: "ledger.anchor-adopted".into(),
                            subject: "ledger".into(),
                            before: None,
                            after: Some(self.anchor.path().display().to_string()),
                            reason: Some(format!(
                                "schema {ver} to 5: the head anchor {} from the chain as it is now",
                                if missing {
                                    "is created"
                                } else {
                                    "learns the pruned point"
                                }
                            )),
                        },
                    )
                    .map_err(backend)?;
                    adopt = true;
                }
            }
            if ver < SCHEMA_VERSION {
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
        }
        if let Some(held) = &anchor_lock {
            if initialised || adopt {
                self.adopt_anchor(held)?;
            }
        }
        drop(anchor_lock);
        self.check_anchor()
    }

    /// Rows that would open something but were not written by portwarden on this host:
    /// grants and leases whose MAC does not verify, a pending firewall transaction the
    /// key does not vouch for, and a missing key.
    fn unvouched_rows(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        if self.key_missing {
            out.push(format!(
                "the host key {} is missing: nothing in the store can be vouched for (`log verify --repair` makes a new one)",
                self.path.with_file_name(crate::key::KEY_FILE).display()
            ));
            return Ok(out);
        }
        let mut st = self
            .conn
            .prepare("SELECT addr, protocol, port, expires_at, actor, mac, rowid FROM grants")
            .map_err(backend)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    grant_row(r),
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(backend)?;
        let ends = Ends::load(&self.conn)?;
        for r in rows {
            let (g, mac, rowid) = r.map_err(backend)?;
            let ok = match (&g, mac, &self.key) {
                (Ok(g), Some(m), Some(k)) => ends.grant_ok(k, g, &m),
                _ => false,
            };
            if !ok {
                out.push(match g {
                    Ok(g) => format!(
                        "grant {}/{} from {} was not written by portwarden on this host, or was put back after it was revoked or replaced (its MAC does not verify): it is never loaded",
                        g.port, g.protocol, g.addr
                    ),
                    Err(e) => format!("grant row {rowid} does not read ({e}): it is never loaded"),
                });
            }
        }
        for l in self.leases()? {
            if !self.key.as_ref().is_some_and(|k| ends.lease_ok(k, &l)) {
                out.push(format!(
                    "lease {} ({}/{} for {}) was not written by portwarden on this host, or was put back after it ended (its MAC does not verify): its port is never admitted",
                    l.id, l.port, l.protocol, l.service
                ));
            }
        }
        for t in self.fw_txns()? {
            if t.state == FwState::Pending {
                if let Err(e @ StoreError::SnapshotUnvouched { .. }) = self.fw_verified_snapshot(&t)
                {
                    out.push(e.to_string());
                }
            }
        }
        Ok(out)
    }

    fn create_key(&self) -> Result<crate::key::HostKey, StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::key::HostKey::load_or_create(dir).map_err(|source| StoreError::Io {
            context: format!("cannot create the host key in {}", dir.display()),
            cause: source,
        })
    }

    /// The leases whose ports the firewall admits: written by portwarden on this host
    /// (the MAC verifies), not ended in the ledger since, and not expired (a draining
    /// lease still is: something listens).
    pub fn admitted_leases(&self, now: i64) -> Result<Vec<Lease>, StoreError> {
        let Some(k) = &self.key else {
            return Ok(Vec::new());
        };
        let ends = Ends::load(&self.conn)?;
        Ok(self
            .leases()?
            .into_iter()
            .filter(|l| ends.lease_ok(k, l))
            .filter(|l| l.expires_at > now || l.state == LeaseState::Draining)
            .collect())
    }

    /// Writes the anchor from the chain as it is: its head, and the records before its
    /// first as pruned. Only at initialisation, at the migration that introduced it, and
    /// by `log verify --repair` (each on the record).
    fn adopt_anchor(&self, held: &crate::anchor::Lock) -> Result<(), StoreError> {
        let first: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM ledger", [], |r| r.get(0))
            .map_err(backend)?;
        let head = Head {
            pruned: Some(first.map_or(0, |f| f - 1)),
            ..self.head()?
        };
        self.anchor
            .reset(held, &head)
            .map_err(|source| StoreError::Io {
                context: format!(
                    "cannot write the head anchor {}",
                    self.anchor.path().display()
                ),
                cause: source,
            })?;
        Ok(())
    }

    /// `PRAGMA quick_check`: a damaged file is refused before anything is written to it.
    fn quick_check(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let mut st = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(|e| classify(&path, e))?;
        let rows: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| classify(&path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| classify(&path, e))?;
        if rows.len() == 1 && rows[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            path,
            reason: format!("integrity check failed: {}", rows.join("; ")),
        })
    }

    /// Compares the ledger with its anchor: a ledger behind it, cut before the point
    /// retention reached, or without its anchor refuses every write.
    fn check_anchor(&mut self) -> Result<(), StoreError> {
        let read = |a: &Anchor| {
            a.read().map_err(|source| StoreError::Io {
                context: "cannot read the head anchor".into(),
                cause: source,
            })
        };
        let mut anchor = read(&self.anchor)?;
        if anchor.is_none() && !self.read_only {
            // A first opener may be between its commit and its anchor: wait for its lock.
            if let Ok(_held) = self.anchor.lock() {
                anchor = read(&self.anchor)?;
            }
        }
        let Some(anchor) = anchor else {
            // Every store of this schema had one: deleting it with the ledger's tail would
            // otherwise hide the tail's loss.
            self.anchor_missing = true;
            self.repairable = true;
            self.refused = Some(format!(
                "the head anchor {} of {} is missing, so deleted records cannot be told from a short chain; refusing to write (`portwarden log verify` shows the chain; `portwarden log verify --repair` adopts its head as the anchor, on the record)",
                self.anchor.path().display(),
                self.path.display()
            ));
            return Ok(());
        };
        let head = self.head()?;
        let at: Option<String> = self
            .conn
            .query_row(
                "SELECT hash FROM ledger WHERE seq = ?1",
                [anchor.seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let first: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM ledger", [], |r| r.get(0))
            .map_err(backend)?;
        let cut = first.filter(|f| anchor.pruned.is_some_and(|p| *f > p + 1));
        let why = if let Some(f) = cut {
            Some(format!(
                "the ledger in {} starts at seq {f} but retention pruned only through seq {} (its anchor {} says): records were deleted and a checkpoint forged over them; refusing to write",
                self.path.display(),
                anchor.pruned.unwrap_or(0),
                self.anchor.path().display()
            ))
        } else if head.seq < anchor.seq {
            Some(format!(
                "the ledger in {} ends at seq {} but its anchor {} says it reached seq {}: records were deleted; refusing to write (`portwarden log verify` shows the damage; restore from a backup, or move the anchor aside and run `portwarden log verify --repair` to accept the loss on the record)",
                self.path.display(),
                head.seq,
                self.anchor.path().display(),
                anchor.seq
            ))
        } else {
            match at {
                Some(h) if h != anchor.hash => Some(format!(
                    "record {} of the ledger in {} does not have the hash its anchor {} holds: the chain was rewritten; refusing to write",
                    anchor.seq,
                    self.path.display(),
                    self.anchor.path().display()
                )),
                None if anchor.seq > 0 && first.is_none_or(|f| anchor.seq >= f) => Some(format!(
                    "record {} named by the anchor {} is missing from {}; refusing to write",
                    anchor.seq,
                    self.anchor.path().display(),
                    self.path.display()
                )),
                _ => None,
            }
        };
        self.repairable = why.is_none();
        self.refused = why.or_else(|| {
            self.key_missing.then(|| {
                format!(
                    "the host key {} of {} is missing, so nothing in the store can be vouched for; refusing to write (`portwarden log verify --repair` makes a new key and vouches for the grants and leases as they are, on the record)",
                    self.path.with_file_name(crate::key::KEY_FILE).display(),
                    self.path.display()
                )
            })
        });
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn dir_writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access reads a NUL-terminated path.
    let ok = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
    if !ok {
        return false;
    }
    // Root passes access(2) on read-only mounts too; statvfs tells.
    // SAFETY: statvfs writes into the struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0) || st.f_flag & libc::ST_RDONLY == 0
}

/// Whether we may write `path`, asked without opening it (closing a descriptor of the
/// database would drop the POSIX locks another connection of this process holds).
fn file_writable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access reads a NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// A path for an SQLite `file:` URI (`%`, `?` and `#` percent-encoded).
fn uri_path(p: &Path) -> String {
    let mut s = String::new();
    for b in p.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' | 0x80.. => s.push_str(&format!("%{b:02X}")),
            _ => s.push(*b as char),
        }
    }
    s
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => StoreError::Io {
            context: format!("cannot open {}", path.display()),
            cause: std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()),
        },
        _ => StoreError::Backend(e.to_string()),
    }
}

const LEASE_COLS: &str = "id, scope, protocol, port, service, pool, owner, process, state, \
                          created_at, expires_at, last_seen_listening, missed, ttl_max, mac";

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    let proto: String = r.get(2)?;
    let port: i64 = r.get(3)?;
    let state: String = r.get(8)?;
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} in lease row").into(),
        )
    };
    Ok(Lease {
        id: r.get(0)?,
        scope: r.get(1)?,
        protocol: proto.parse::<Protocol>().map_err(|_| bad("protocol"))?,
        port: Port::from_i64(port).map_err(|_| bad("port"))?,
        service: r.get(4)?,
        pool: r.get(5)?,
        owner: r.get(6)?,
        process: r.get(7)?,
        state: LeaseState::parse(&state).ok_or_else(|| bad("state"))?,
        created_at: r.get(9)?,
        expires_at: r.get(10)?,
        last_seen_listening: r.get(11)?,
        missed: r.get::<_, i64>(12)? as u32,
        ttl_max: r.get(13)?,
        mac: r.get(14)?,
    })
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        ts: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        before: r.get(5)?,
        after: r.get(6)?,
        reason: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

const ENTRY_COLS: &str = "seq, ts, actor, action, subject, before, after, reason, prev_hash, hash";

fn json<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}

/// Appends a ledger record inside the caller's transaction.
fn append(tx: &rusqlite::Transaction<'_>, now: i64, c: Change) -> rusqlite::Result<Entry> {
    let head: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let e = ledger::next_entry(head.as_ref().map(|(s, h)| (*s, h.as_str())), now, c);
    tx.prepare_cached(
        "INSERT INTO ledger (seq, ts, actor, action, subject, before, after, reason, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.seq, e.ts, e.actor, e.action, e.subject, e.before, e.after, e.reason, e.prev_hash,
        e.hash
    ])
    .and_then(|n| {
        // A table altered to ignore some inserts must not lose records quietly.
        if n == 1 {
            Ok(())
        } else {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                Some(format!(
                    "the ledger did not take record {} (its table was altered?)",
                    e.seq
                )),
            ))
        }
    })?;
    Ok(e)
}

/// The MAC of a grant row, bound to the ledger record that made it (`seq`): who, what,
/// until when. Stored as `SEQ:HEX`.
fn grant_mac(k: &crate::key::HostKey, seq: i64, g: &GrantRecord) -> String {
    let m = k.mac(
        format!(
            "portwarden grant\n{seq}\n{}\n{}\n{}\n{}",
            g.addr,
            g.protocol.as_str(),
            g.port.get(),
            g.expires_at
        )
        .as_bytes(),
    );
    format!("{seq}:{m}")
}

/// The MAC of a lease row's fixed part, bound to the ledger record that made it: which
/// port it admits for which service. Stored as `SEQ:HEX`.
fn lease_mac(k: &crate::key::HostKey, seq: i64, l: &Lease) -> String {
    let m = k.mac(
        format!(
            "portwarden lease\n{seq}\n{}\n{}\n{}\n{}\n{}",
            l.id,
            l.scope,
            l.service,
            l.protocol.as_str(),
            l.port.get()
        )
        .as_bytes(),
    );
    format!("{seq}:{m}")
}

/// The MAC of a token row: its name, role and secret's digest, bound to the ledger
/// record that made it. Stored as `SEQ:HEX`.
fn token_mac(k: &crate::key::HostKey, seq: i64, t: &TokenRecord) -> String {
    let m = k.mac(
        format!(
            "portwarden token\n{seq}\n{}\n{}\n{}",
            t.name,
            t.role.as_str(),
            t.sha256
        )
        .as_bytes(),
    );
    format!("{seq}:{m}")
}

const TOKEN_COLS: &str = "name, role, sha256, created_at, actor, mac";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, Option<String>)> {
    let role: String = r.get(1)?;
    Ok((
        TokenRecord {
            name: r.get(0)?,
            role: role.parse().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("unknown role {role:?}").into(),
                )
            })?,
            sha256: r.get(2)?,
            created_at: r.get(3)?,
            actor: r.get(4)?,
        },
        r.get(5)?,
    ))
}

/// The sequence number a `SEQ:HEX` MAC is bound to.
fn mac_seq(mac: &str) -> Option<i64> {
    mac.split_once(':')?.0.parse().ok()
}

/// The ledger records that end a vouched row: for grants, any later `fw.grant` or
/// `fw.revoke` of the same (subject, address); for leases, a later `lease.release` or
/// `lease.reclaim` of the same port. A row put back after it ended (from a backup, or
/// by hand) still carries a valid MAC, but an older one than its end.
struct Ends {
    grants: HashMap<(String, String), i64>,
    leases: HashMap<String, i64>,
}

impl Ends {
    fn load(c: &Connection) -> Result<Ends, StoreError> {
        let mut st = c
            .prepare(
                "SELECT seq, action, subject, before, after FROM ledger WHERE action IN \
                 ('fw.grant', 'fw.revoke', 'lease.release', 'lease.reclaim')",
            )
            .map_err(backend)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(backend)?;
        let mut e = Ends {
            grants: HashMap::new(),
            leases: HashMap::new(),
        };
        for r in rows {
            let (seq, action, subject, before, after) = r.map_err(backend)?;
            let addr = match action.as_str() {
                "fw.grant" => after.and_then(|a| a.split(' ').next().map(str::to_string)),
                "fw.revoke" => before,
                _ => {
                    let m = e.leases.entry(subject).or_insert(seq);
                    *m = (*m).max(seq);
                    continue;
                }
            };
            if let Some(a) = addr {
                let m = e.grants.entry((subject, a)).or_insert(seq);
                *m = (*m).max(seq);
            }
        }
        Ok(e)
    }

    fn grant_ok(&self, k: &crate::key::HostKey, g: &GrantRecord, mac: &str) -> bool {
        let Some(seq) = mac_seq(mac) else {
            return false;
        };
        grant_mac(k, seq, g) == mac
            && self
                .grants
                .get(&(format!("{}/{}", g.port, g.protocol), g.addr.to_string()))
                .is_none_or(|last| *last <= seq)
    }

    fn lease_ok(&self, k: &crate::key::HostKey, l: &Lease) -> bool {
        let Some(mac) = &l.mac else {
            return false;
        };
        let Some(seq) = mac_seq(mac) else {
            return false;
        };
        lease_mac(k, seq, l) == *mac
            && self
                .leases
                .get(&format!("{}/{}", l.port, l.protocol))
                .is_none_or(|end| *end < seq)
    }
}

/// Vouches for every grant and lease row as it is, bound to the current head (a
/// migration from before keys, or `--repair` after a lost key, both on the record).
/// Rows that do not read are left unvouched.
fn vouch_rows(tx: &rusqlite::Transaction<'_>, k: &crate::key::HostKey) -> Result<(), StoreError> {
    let head: i64 = tx
        .query_row("SELECT coalesce(max(seq), 0) FROM ledger", [], |r| r.get(0))
        .map_err(backend)?;
    let grants: Vec<(i64, GrantRecord)> = {
        let mut st = tx
            .prepare("SELECT addr, protocol, port, expires_at, actor, rowid FROM grants")
            .map_err(backend)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(5)?, grant_row(r))))
            .map_err(backend)?;
        let mut v = Vec::new();
        for r in rows {
            if let (id, Ok(g)) = r.map_err(backend)? {
                v.push((id, g));
            }
        }
        v
    };
    for (rowid, g) in grants {
        tx.execute(
            "UPDATE grants SET mac = ?2 WHERE rowid = ?1",
            params![rowid, grant_mac(k, head, &g)],
        )
        .map_err(backend)?;
    }
    let leases: Vec<Lease> = {
        let mut st = tx
            .prepare(&format!("SELECT {LEASE_COLS} FROM leases"))
            .map_err(backend)?;
        let rows = st.query_map([], lease_row).map_err(backend)?;
        rows.filter_map(Result::ok).collect()
    };
    for l in leases {
        tx.execute(
            "UPDATE leases SET mac = ?2 WHERE id = ?1",
            params![l.id, lease_mac(k, head, &l)],
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// Notes on a lease the ledger record that last changed it.
fn set_lease_seq(tx: &rusqlite::Transaction<'_>, id: i64, seq: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE leases SET ledger_seq = ?2 WHERE id = ?1",
        params![id, seq],
    )
    .map_err(backend)?;
    Ok(())
}

fn get_lease(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<Lease, StoreError> {
    tx.query_row(
        &format!("SELECT {LEASE_COLS} FROM leases WHERE id = ?1"),
        [id],
        lease_row,
    )
    .optional()
    .map_err(backend)?
    .ok_or(StoreError::NotFound(id))
}

/// A `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so two writers
/// never both read and then fail to upgrade.
fn immediate(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)
}

/// The lease, if `caller` owns it (Kubernetes' #64466 came from releasing without this).
fn owned_lease(tx: &rusqlite::Transaction<'_>, id: i64, caller: &str) -> Result<Lease, StoreError> {
    let l = get_lease(tx, id)?;
    if l.owner != caller {
        return Err(StoreError::NotOwner {
            id,
            owner: l.owner,
            caller: caller.to_string(),
        });
    }
    Ok(l)
}

/// A ledger change about one lease.
fn lease_change(
    actor: &str,
    action: &str,
    l: &Lease,
    before: Option<String>,
    after: Option<String>,
    reason: Option<String>,
) -> Change {
    Change {
        actor: actor.to_string(),
        action: action.to_string(),
        subject: format!("{}/{}", l.port, l.protocol),
        before,
        after,
        reason,
    }
}

struct Probe<'a, 'b> {
    stmt: rusqlite::CachedStatement<'a>,
    scope: &'b str,
    error: Option<rusqlite::Error>,
}

impl LeaseProbe for Probe<'_, '_> {
    fn is_leased(&mut self, protocol: Protocol, port: Port) -> bool {
        match self
            .stmt
            .query_row(params![self.scope, protocol.as_str(), port.get()], |_| {
                Ok(())
            })
            .optional()
        {
            Ok(found) => found.is_some(),
            Err(e) => {
                // Treat as taken and surface the error after the decision.
                self.error.get_or_insert(e);
                true
            }
        }
    }
}

fn identity_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Identity> {
    let proto: String = r.get(0)?;
    let port: i64 = r.get(1)?;
    Ok(Identity {
        protocol: proto.parse::<Protocol>().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                "bad protocol in identity row".into(),
            )
        })?,
        port: Port::from_i64(port).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Integer,
                "bad port in identity row".into(),
            )
        })?,
        exe: r.get(2)?,
        sha256: r.get(3)?,
        first_seen: r.get(4)?,
        last_seen: r.get(5)?,
    })
}

fn txn_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FwTxn> {
    let state: String = r.get(3)?;
    Ok(FwTxn {
        id: r.get(0)?,
        created: r.get(1)?,
        deadline: r.get(2)?,
        state: match state.as_str() {
            "pending" => FwState::Pending,
            "confirmed" => FwState::Confirmed,
            _ => FwState::RolledBack,
        },
        snapshot: r.get(4)?,
        ruleset: r.get(5)?,
        listing: r.get(6)?,
        actor: r.get(7)?,
        ledger_seq: r.get(8)?,
        watcher_pid: r
            .get::<_, Option<i64>>(9)?
            .and_then(|p| u32::try_from(p).ok()),
    })
}

const TXN_COLS: &str =
    "id, created, deadline, state, snapshot, ruleset, listing, actor, ledger_seq, watcher_pid";

fn finish_action(to: FwState) -> &'static str {
    if to == FwState::Confirmed {
        "fw.confirm"
    } else {
        "fw.rollback"
    }
}

/// What the host key vouches for in a confirm or rollback record.
fn finish_message(txn: i64, to: FwState) -> String {
    format!("portwarden {}\ntxn {txn}", finish_action(to))
}

/// What the host key vouches for in an apply record: this transaction, its deadline (a
/// transaction applied without one is never rolled back), this snapshot.
fn vouch_message(txn: i64, deadline: Option<i64>, digest: &str) -> String {
    let d = deadline.map_or("none".to_string(), |d| d.to_string());
    format!("portwarden fw.apply\ntxn {txn}\ndeadline {d}\nsnapshot {digest}")
}

/// The `before` of an apply record: the snapshot's digest, the deadline, and the host
/// key's MAC of both with the transaction id.
fn vouched(
    key: Option<&crate::key::HostKey>,
    txn: i64,
    deadline: Option<i64>,
    digest: &str,
) -> String {
    let d = deadline.map_or("none".to_string(), |d| d.to_string());
    match key {
        Some(k) => format!(
            "{digest} deadline:{d} mac:{}",
            k.mac(vouch_message(txn, deadline, digest).as_bytes())
        ),
        None => digest.to_string(),
    }
}

/// An apply record's `before`, when the key's MAC over it verifies for transaction
/// `txn`: (snapshot digest, deadline).
fn apply_vouched<'a>(
    key: &crate::key::HostKey,
    txn: i64,
    before: &'a str,
) -> Option<(&'a str, Option<i64>)> {
    let (digest, deadline, mac) = parse_vouched(before)?;
    (key.mac(vouch_message(txn, deadline, digest).as_bytes()) == mac).then_some((digest, deadline))
}

/// An apply record's `before`: (digest, deadline, MAC).
fn parse_vouched(before: &str) -> Option<(&str, Option<i64>, &str)> {
    let (rest, mac) = before.split_once(" mac:")?;
    let (digest, d) = rest.split_once(" deadline:")?;
    let deadline = match d {
        "none" => None,
        n => Some(n.parse().ok()?),
    };
    Some((digest, deadline, mac))
}

/// How the apply's ledger record names its snapshot: `sha256:<hex>`, or `none`.
fn snapshot_digest(snapshot: Option<&str>) -> String {
    use sha2::Digest;
    match snapshot {
        None => "none".into(),
        Some(t) => format!(
            "sha256:{}",
            ledger::hex(&sha2::Sha256::digest(t.as_bytes()))
        ),
    }
}

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRecord> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("bad {what} in grant row").into(),
        )
    };
    let addr: String = r.get(0)?;
    let proto: String = r.get(1)?;
    Ok(GrantRecord {
        addr: addr.parse().map_err(|_| bad(0, "address"))?,
        protocol: proto.parse().map_err(|_| bad(1, "protocol"))?,
        port: Port::from_i64(r.get(2)?).map_err(|_| bad(2, "port"))?,
        expires_at: r.get(3)?,
        actor: r.get(4)?,
    })
}

/// One ledger row read column by column, so a damaged row is named, not a conversion error.
fn tolerant_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Entry, (i64, String)>> {
    use rusqlite::types::Value;
    let rowid: i64 = r.get(10)?;
    let vals: Vec<Value> = (0..10).map(|i| r.get(i)).collect::<Result<_, _>>()?;
    let names = [
        "seq",
        "ts",
        "actor",
        "action",
        "subject",
        "before",
        "after",
        "reason",
        "prev_hash",
        "hash",
    ];
    let seq = match vals[0] {
        Value::Integer(n) => n,
        _ => {
            return Ok(Err((
                rowid,
                format!("record at row {rowid}: `seq` is not an integer"),
            )));
        }
    };
    let kind = |v: &Value| match v {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    };
    let text = |i: usize, optional: bool| -> Result<Option<String>, (i64, String)> {
        match &vals[i] {
            Value::Text(t) => Ok(Some(t.clone())),
            Value::Null if optional => Ok(None),
            v => Err((
                seq,
                format!("record {seq}: `{}` is {}, not text", names[i], kind(v)),
            )),
        }
    };
    let ts = match vals[1] {
        Value::Integer(n) => n,
        ref v => {
            return Ok(Err((
                seq,
                format!("record {seq}: `ts` is {}, not an integer", kind(v)),
            )));
        }
    };
    let build = || -> Result<Entry, (i64, String)> {
        Ok(Entry {
            seq,
            ts,
            actor: text(2, false)?.unwrap_or_default(),
            action: text(3, false)?.unwrap_or_default(),
            subject: text(4, false)?.unwrap_or_default(),
            before: text(5, true)?,
            after: text(6, true)?,
            reason: text(7, true)?,
            prev_hash: text(8, false)?.unwrap_or_default(),
            hash: text(9, false)?.unwrap_or_default(),
        })
    };
    Ok(build())
}

/// Leases: the synchronous calls behind [`crate::SqliteLeases`]'s [`crate::LeaseStore`].
impl SqliteStore {
    /// [`crate::LeaseStore::allocate`]: `decide` runs once, inside an immediate transaction.
    pub fn allocate(
        &mut self,
        now: i64,
        actor: &str,
        decide: &mut dyn FnMut(&mut dyn LeaseProbe) -> Result<NewLease, AllocError>,
    ) -> Result<Lease, StoreError> {
        let scope = self.scope.clone();
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let new = {
            let mut probe = Probe {
                stmt: tx
                    .prepare_cached(
                        "SELECT 1 FROM leases WHERE scope = ?1 AND protocol = ?2 AND port = ?3",
                    )
                    .map_err(backend)?,
                scope: &scope,
                error: None,
            };
            let decided = decide(&mut probe);
            if let Some(e) = probe.error {
                return Err(backend(e));
            }
            decided?
        };
        let id: i64 = tx
            .prepare_cached(
                "INSERT INTO leases (scope, protocol, port, service, pool, owner, process, state, \
                 created_at, expires_at, missed, ttl_max) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'planned', ?8, ?9, 0, ?10) \
                 RETURNING id",
            )
            .map_err(backend)?
            .query_row(
                params![
                    new.scope,
                    new.protocol.as_str(),
                    new.port.get(),
                    new.service,
                    new.pool,
                    new.owner,
                    new.process,
                    now,
                    new.expires_at,
                    new.ttl_max
                ],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let lease = Lease {
            id,
            scope: new.scope,
            protocol: new.protocol,
            port: new.port,
            service: new.service,
            pool: new.pool,
            owner: new.owner,
            process: new.process,
            state: LeaseState::Planned,
            created_at: now,
            expires_at: new.expires_at,
            last_seen_listening: None,
            missed: 0,
            ttl_max: new.ttl_max,
            mac: None,
        };
        let e = append(
            &tx,
            now,
            lease_change(actor, "lease.alloc", &lease, None, json(&lease), None),
        )
        .map_err(backend)?;
        // Bound to the record that made it.
        let lease = Lease {
            mac: self.key.as_ref().map(|k| lease_mac(k, e.seq, &lease)),
            ..lease
        };
        // One statement for both: this is the allocation hot path.
        tx.prepare_cached("UPDATE leases SET mac = ?2, ledger_seq = ?3 WHERE id = ?1")
            .map_err(backend)?
            .execute(params![id, lease.mac, e.seq])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(lease)
    }

    /// [`crate::LeaseStore::leases`].
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {LEASE_COLS} FROM leases ORDER BY scope, port, protocol"
            ))
            .map_err(backend)?;
        let rows = st.query_map([], lease_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    /// [`crate::LeaseStore::renew`].
    pub fn renew(
        &mut self,
        id: i64,
        caller: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let before = owned_lease(&tx, id, caller)?;
        tx.execute(
            "UPDATE leases SET expires_at = ?2 WHERE id = ?1",
            params![id, expires_at],
        )
        .map_err(backend)?;
        let after = Lease {
            expires_at,
            ..before.clone()
        };
        let e = append(
            &tx,
            now,
            lease_change(
                actor,
                "lease.renew",
                &after,
                json(&before),
                json(&after),
                None,
            ),
        )
        .map_err(backend)?;
        set_lease_seq(&tx, id, e.seq)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(after)
    }

    /// [`crate::LeaseStore::release`].
    pub fn release(
        &mut self,
        id: i64,
        caller: &str,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let before = owned_lease(&tx, id, caller)?;
        tx.execute("DELETE FROM leases WHERE id = ?1", [id])
            .map_err(backend)?;
        append(
            &tx,
            now,
            lease_change(actor, "lease.release", &before, json(&before), None, None),
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(before)
    }

    /// [`crate::LeaseStore::reclaim`].
    pub fn reclaim(
        &mut self,
        now: i64,
        actor: &str,
        listening: &dyn Fn(&Lease) -> bool,
        decide: &dyn Fn(&Lease, bool) -> Option<ReclaimAction>,
        dry_run: bool,
    ) -> Result<Vec<Reclaimed>, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let leases: Vec<Lease> = {
            let mut st = tx
                .prepare(&format!("SELECT {LEASE_COLS} FROM leases ORDER BY id"))
                .map_err(backend)?;
            let rows = st.query_map([], lease_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
        };
        let mut out = Vec::new();
        for l in leases {
            let heard = listening(&l);
            let v = portwarden_core::alloc::observe(&l.view(), heard, now);
            let observed = Lease {
                state: v.state,
                last_seen_listening: v.last_seen_listening,
                missed: v.missed,
                ..l.clone()
            };
            tx.execute(
                "UPDATE leases SET state = ?2, last_seen_listening = ?3, missed = ?4 WHERE id = ?1",
                params![
                    l.id,
                    observed.state.as_str(),
                    observed.last_seen_listening,
                    observed.missed
                ],
            )
            .map_err(backend)?;
            if observed.state != l.state {
                let e = append(
                    &tx,
                    now,
                    lease_change(
                        actor,
                        "lease.active",
                        &l,
                        json(&l),
                        json(&observed),
                        Some("listener seen".into()),
                    ),
                )
                .map_err(backend)?;
                set_lease_seq(&tx, l.id, e.seq)?;
            }
            let Some(action) = decide(&observed, heard) else {
                continue;
            };
            match action {
                ReclaimAction::Retire(reason) => {
                    tx.execute("DELETE FROM leases WHERE id = ?1", [l.id])
                        .map_err(backend)?;
                    append(
                        &tx,
                        now,
                        lease_change(
                            actor,
                            "lease.reclaim",
                            &l,
                            json(&observed),
                            None,
                            json(&reason).map(|s| s.trim_matches('"').to_string()),
                        ),
                    )
                    .map_err(backend)?;
                }
                ReclaimAction::Drain => {
                    tx.execute("UPDATE leases SET state = 'draining' WHERE id = ?1", [l.id])
                        .map_err(backend)?;
                    let after = Lease {
                        state: LeaseState::Draining,
                        ..observed.clone()
                    };
                    let e = append(
                        &tx,
                        now,
                        lease_change(
                            actor,
                            "lease.drain",
                            &l,
                            json(&observed),
                            json(&after),
                            Some("expired while still listened on".into()),
                        ),
                    )
                    .map_err(backend)?;
                    set_lease_seq(&tx, l.id, e.seq)?;
                }
            }
            out.push(Reclaimed {
                lease: observed,
                action,
            });
        }
        if dry_run {
            tx.rollback().map_err(backend)?;
        } else {
            tx.commit().map_err(backend)?;
            self.committed()?;
        }
        Ok(out)
    }
}

impl Journal for SqliteStore {
    fn fw_begin(
        &mut self,
        now: i64,
        actor: &str,
        deadline: Option<i64>,
        snapshot: Option<String>,
        ruleset: &str,
    ) -> Result<FwTxn, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let pending: Option<i64> = tx
            .query_row("SELECT id FROM fw_txn WHERE state = 'pending'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?;
        if let Some(id) = pending {
            return Err(StoreError::Pending(id));
        }
        let state = if deadline.is_some() {
            "pending"
        } else {
            "confirmed"
        };
        let id: i64 = tx
            .query_row(
                "INSERT INTO fw_txn (created, deadline, state, snapshot, ruleset, actor) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                params![now, deadline, state, snapshot, ruleset, actor],
                |r| r.get(0),
            )
            .map_err(backend)?;
        // The snapshot's digest goes into the chain: rollback loads only the snapshot
        // this record vouches for.
        let e = append(
            &tx,
            now,
            Change {
                actor: actor.to_string(),
                action: "fw.apply".into(),
                subject: format!("fw txn {id}"),
                before: Some(vouched(
                    self.key.as_ref(),
                    id,
                    deadline,
                    &snapshot_digest(snapshot.as_deref()),
                )),
                after: Some(ruleset.to_string()),
                reason: Some(match deadline {
                    Some(d) => format!(
                        "pending, rolls back at {} unless confirmed",
                        portwarden_core::time::utc(d)
                    ),
                    None => "applied without confirmation".into(),
                }),
            },
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE fw_txn SET ledger_seq = ?2 WHERE id = ?1",
            params![id, e.seq],
        )
        .map_err(backend)?;
        let t = tx
            .query_row(
                &format!("SELECT {TXN_COLS} FROM fw_txn WHERE id = ?1"),
                [id],
                txn_row,
            )
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(t)
    }

    fn fw_set_listing(&mut self, id: i64, listing: &str) -> Result<(), StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        tx.execute(
            "UPDATE fw_txn SET listing = ?2 WHERE id = ?1",
            params![id, listing],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()
    }

    fn fw_set_watcher(&mut self, id: i64, pid: Option<u32>) -> Result<(), StoreError> {
        self.writable()?;
        self.conn
            .execute(
                "UPDATE fw_txn SET watcher_pid = ?2 WHERE id = ?1",
                params![id, pid],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn fw_verified_snapshot(&self, t: &FwTxn) -> Result<Option<String>, StoreError> {
        // The first record of this transaction's apply, whatever the transaction row
        // says: anyone who can write the store can append a later, well-chained record
        // vouching for another snapshot, but not change one the anchor has passed.
        let first: Option<(i64, Option<String>)> = self
            .conn
            .query_row(
                "SELECT seq, before FROM ledger WHERE action = 'fw.apply' AND subject = ?1 \
                 ORDER BY seq LIMIT 1",
                [format!("fw txn {}", t.id)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        // The row as stored now, not as `t` was read: it may have changed since.
        let (row_seq, snapshot, deadline): (Option<i64>, Option<String>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT ledger_seq, snapshot, deadline FROM fw_txn WHERE id = ?1",
                [t.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(backend)?
            .unwrap_or_default();
        let found = snapshot_digest(snapshot.as_deref());
        let unvouched = |why: &str| StoreError::SnapshotUnvouched {
            id: t.id,
            why: why.into(),
        };
        let Some((seq, Some(before))) = first else {
            return Err(unvouched("its apply has no ledger record"));
        };
        if parse_vouched(&before).is_none() {
            return Err(unvouched("its apply record carries no MAC"));
        }
        let Some(key) = &self.key else {
            return Err(unvouched("this host has no key"));
        };
        let Some((recorded, vouched_deadline)) = apply_vouched(key, t.id, &before) else {
            return Err(unvouched("the MAC of its apply record does not verify"));
        };
        // The deadline as stored now must be the one vouched for: a confirmed transaction
        // turned back into a pending one with a deadline is a replay.
        if deadline != vouched_deadline {
            return Err(unvouched("its deadline is not the one it was applied with"));
        }
        // Only the newest apply, and only while the ledger has not closed it, can be
        // rolled back: an old transaction set back to pending is a replay.
        // Counted only when the key vouches for them too: a forged later record must not
        // switch off the rollback of a pending apply.
        let later: Vec<(String, String, Option<String>, Option<String>)> = {
            let mut st = self
                .conn
                .prepare(
                    "SELECT action, subject, before, after FROM ledger WHERE seq > ?1 AND \
                     ((action IN ('fw.confirm', 'fw.rollback') AND subject = ?2) OR action = 'fw.apply') \
                     ORDER BY seq",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![seq, format!("fw txn {}", t.id)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let genuine =
            |action: &str, subject: &str, before: Option<&str>, after: Option<&str>| match action {
                "fw.apply" => {
                    let Some(id) = subject
                        .strip_prefix("fw txn ")
                        .and_then(|n| n.parse::<i64>().ok())
                    else {
                        return false;
                    };
                    // Whatever that transaction's row says now: the record carries its
                    // deadline.
                    before.is_some_and(|b| apply_vouched(key, id, b).is_some())
                }
                _ => {
                    let to = if action == "fw.confirm" {
                        FwState::Confirmed
                    } else {
                        FwState::RolledBack
                    };
                    after.and_then(|a| a.strip_prefix("mac:"))
                        == Some(key.mac(finish_message(t.id, to).as_bytes()).as_str())
                }
            };
        if let Some((a, ..)) = later
            .iter()
            .find(|(a, s, b, f)| genuine(a, s, b.as_deref(), f.as_deref()))
        {
            return Err(unvouched(&match a.as_str() {
                "fw.apply" => "a later apply followed it: it is not the one in force".to_string(),
                _ => format!("the ledger already closed it ({a})"),
            }));
        }
        let tampered = |recorded: String| StoreError::SnapshotTampered {
            id: t.id,
            recorded,
            found: found.clone(),
        };
        if let Some(row) = row_seq.filter(|r| *r != seq) {
            return Err(tampered(format!(
                "{recorded} at record {seq}, while the transaction row points at record {row}"
            )));
        }
        if recorded != found {
            return Err(tampered(recorded.to_string()));
        }
        Ok(snapshot)
    }

    fn grants(&self, now: i64) -> Result<Vec<GrantRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT addr, protocol, port, expires_at, actor, mac FROM grants \
                 WHERE expires_at > ?1 ORDER BY addr, protocol, port",
            )
            .map_err(backend)?;
        // Only rows portwarden wrote on this host: a row that does not read, or whose MAC
        // does not verify, opens nothing (`log verify` names them).
        let rows = st
            .query_map([now], |r| Ok((grant_row(r), r.get::<_, Option<String>>(5))))
            .map_err(backend)?;
        let ends = Ends::load(&self.conn)?;
        let mut out = Vec::new();
        for r in rows {
            let (g, mac) = r.map_err(backend)?;
            let (Ok(g), Ok(Some(mac)), Some(k)) = (g, mac, &self.key) else {
                continue;
            };
            if ends.grant_ok(k, &g, &mac) {
                out.push(g);
            }
        }
        Ok(out)
    }

    fn grant(&mut self, now: i64, grants: &[GrantRecord]) -> Result<(), StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        tx.execute("DELETE FROM grants WHERE expires_at <= ?1", [now])
            .map_err(backend)?;
        for g in grants {
            // The record first: the row's MAC is bound to it.
            let e = append(
                &tx,
                now,
                Change {
                    actor: g.actor.clone(),
                    action: "fw.grant".into(),
                    subject: format!("{}/{}", g.port, g.protocol),
                    before: None,
                    after: Some(format!(
                        "{} until {}",
                        g.addr,
                        portwarden_core::time::utc(g.expires_at)
                    )),
                    reason: None,
                },
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO grants (addr, protocol, port, expires_at, actor, created_at, mac) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (addr, protocol, port) DO UPDATE \
                 SET expires_at = excluded.expires_at, actor = excluded.actor, mac = excluded.mac",
                params![
                    g.addr.to_string(),
                    g.protocol.as_str(),
                    g.port.get(),
                    g.expires_at,
                    g.actor,
                    now,
                    self.key.as_ref().map(|k| grant_mac(k, e.seq, g))
                ],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.committed()
    }

    fn revoke(
        &mut self,
        now: i64,
        actor: &str,
        keys: &[(std::net::IpAddr, Protocol, Port)],
    ) -> Result<(), StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        for (addr, protocol, port) in keys {
            tx.execute(
                "DELETE FROM grants WHERE addr = ?1 AND protocol = ?2 AND port = ?3",
                params![addr.to_string(), protocol.as_str(), port.get()],
            )
            .map_err(backend)?;
            append(
                &tx,
                now,
                Change {
                    actor: actor.to_string(),
                    action: "fw.revoke".into(),
                    subject: format!("{port}/{protocol}"),
                    before: Some(addr.to_string()),
                    after: None,
                    reason: None,
                },
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.committed()
    }

    fn token_create(&mut self, now: i64, t: &TokenRecord) -> Result<(), StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let taken: i64 = tx
            .query_row(
                "SELECT count(*) FROM tokens WHERE name = ?1",
                [&t.name],
                |r| r.get(0),
            )
            .map_err(backend)?;
        if taken > 0 {
            return Err(StoreError::Exists(format!(
                "a token named `{}` exists: revoke it first",
                t.name
            )));
        }
        let e = append(
            &tx,
            now,
            Change {
                actor: t.actor.clone(),
                action: "token.create".into(),
                subject: format!("token:{}", t.name),
                before: None,
                after: Some(format!("role {}", t.role.as_str())),
                reason: None,
            },
        )
        .map_err(backend)?;
        tx.execute(
            &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                t.name,
                t.role.as_str(),
                t.sha256,
                t.created_at,
                t.actor,
                self.key.as_ref().map(|k| token_mac(k, e.seq, t))
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()
    }

    fn policy_adopt(
        &mut self,
        now: i64,
        a: NewAdoption<'_>,
    ) -> Result<Option<PolicyAdoption>, StoreError> {
        self.writable()?;
        let hash = crate::policy_version_of(a.text);
        let tx = immediate(&mut self.conn)?;
        let previous = current_adoption(&tx, self.key.as_ref())
            .map_err(backend)?
            .map(|p| p.hash);
        if previous.as_deref() == Some(hash.as_str()) && a.txn.is_none() {
            return Ok(None);
        }
        tx.execute(
            "INSERT OR IGNORE INTO policy_versions (hash, text, first_seen, author) VALUES (?1, ?2, ?3, ?4)",
            params![hash, a.text, now, a.actor],
        )
        .map_err(backend)?;
        let e = append(
            &tx,
            now,
            Change {
                actor: a.actor.to_string(),
                action: "policy.adopt".into(),
                subject: format!("policy:{hash}"),
                before: previous.clone(),
                after: Some(hash.clone()),
                reason: Some(match (a.reason, a.txn) {
                    (Some(r), _) => format!("{} of {}: {r}", a.how, a.source),
                    (None, Some(t)) => {
                        format!("{} of {} (firewall transaction {t})", a.how, a.source)
                    }
                    (None, None) => format!("{} of {}", a.how, a.source),
                }),
            },
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO policy_adoptions (hash, previous, at, actor, how, source, reason, txn, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![hash, previous, now, a.actor, a.how, a.source, a.reason, a.txn, e.seq],
        )
        .map_err(backend)?;
        let id = tx.last_insert_rowid();
        let mut row = tx
            .query_row(
                &format!("SELECT {ADOPTION_COLS} FROM {ADOPTION_FROM} WHERE a.id = ?1"),
                [id],
                adoption_row,
            )
            .map_err(backend)?;
        if let Some(k) = &self.key {
            tx.execute(
                "UPDATE policy_adoptions SET mac = ?2 WHERE id = ?1",
                params![id, adoption_mac(k, &row)],
            )
            .map_err(backend)?;
            row.vouched = true;
        }
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(Some(row))
    }

    fn change_create(&mut self, now: i64, c: NewChange<'_>) -> Result<ChangeRecord, StoreError> {
        self.writable()?;
        let version = crate::policy_version_of(c.text);
        let tx = immediate(&mut self.conn)?;
        tx.execute(
            "INSERT OR IGNORE INTO policy_versions (hash, text, first_seen, author) VALUES (?1, ?2, ?3, ?4)",
            params![version, c.text, now, c.requester],
        )
        .map_err(backend)?;
        tx.execute(
            &format!(
                "INSERT INTO change_requests ({CHANGE_COLS}) VALUES (NULL, 'requested', ?1, ?2, ?3, ?4, ?5, ?6, '[]', ?7, ?8, NULL, NULL, ?9, ?10, ?10)"
            ),
            params![
                c.requester,
                c.reason,
                c.ticket,
                version,
                c.base,
                c.source,
                c.needed,
                c.require_approval,
                c.preflight,
                now
            ],
        )
        .map_err(backend)?;
        let id = tx.last_insert_rowid();
        let e = append(
            &tx,
            now,
            Change {
                actor: c.requester.to_string(),
                action: "change.request".into(),
                subject: format!("change:{id}"),
                before: c.base.map(str::to_string),
                after: Some(change_word(
                    portwarden_core::change::ChangeState::Requested,
                    &version,
                )),
                reason: Some(match c.ticket {
                    Some(t) => format!("{} (ticket {t})", c.reason),
                    None => c.reason.to_string(),
                }),
            },
        )
        .map_err(backend)?;
        seal_change(&tx, self.key.as_ref(), id, e.seq)?;
        let row = change_by_id(&tx, self.key.as_ref(), id)
            .map_err(backend)?
            .ok_or(StoreError::NoChange(id))?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(row)
    }

    fn change_get(&self, id: i64) -> Result<Option<ChangeRecord>, StoreError> {
        change_by_id(&self.conn, self.key.as_ref(), id).map_err(backend)
    }

    fn changes(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {CHANGE_READ} FROM change_requests ORDER BY id"
            ))
            .map_err(backend)?;
        let key = self.key.as_ref();
        let rows = st
            .query_map([], |r| change_checked(&self.conn, key, r))
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn change_step(
        &mut self,
        now: i64,
        id: i64,
        actor: &str,
        event: &portwarden_core::change::ChangeEvent,
        reason: Option<&str>,
        txn: Option<i64>,
    ) -> Result<ChangeRecord, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let Some(row) = change_by_id(&tx, self.key.as_ref(), id).map_err(backend)? else {
            return Err(StoreError::NoChange(id));
        };
        if !row.vouched {
            return Err(StoreError::Altered(format!(
                "change {id} is not as its last recorded step left it (its row carries no valid MAC of this host's key): it was altered in the store or written by hand; nothing is done with it"
            )));
        }
        let from = change_word(row.change.state, &row.version);
        use portwarden_core::change::{ChangeEvent as E, ChangeState as S};
        let reviewing = matches!(event, E::Approve { .. } | E::Apply)
            && matches!(row.change.state, S::Requested | S::Approved);
        if reviewing {
            // In this transaction: the version in force is what it was when asked, and no
            // other change is being applied (two applies of changes made against the same
            // version would each pass on its own).
            let now_in_force = current_adoption(&tx, self.key.as_ref())
                .map_err(backend)?
                .map(|a| a.hash);
            let short = |v: &Option<String>| {
                v.as_deref()
                    .map_or("none".to_string(), |h| short_hash(h).to_string())
            };
            if now_in_force != row.base {
                let why = format!(
                    "the version in force changed since the request ({} then, {} now)",
                    short(&row.base),
                    short(&now_in_force)
                );
                // Expiring is a step like the others (legal from requested and approved).
                let t = portwarden_core::change::step(&row.change, &E::Expire, now)
                    .map_err(|cause| StoreError::Change { id, cause })?;
                let step = Step {
                    actor,
                    event: &E::Expire,
                    reason: Some(&why),
                    txn: None,
                };
                write_step(&tx, self.key.as_ref(), now, &row, &t.change, step)?;
                tx.commit().map_err(backend)?;
                self.committed()?;
                return Err(StoreError::Stale(format!(
                    "change {id} is stale: {why}; it has expired: request it again (`portwarden change request --policy {}`)",
                    row.source
                )));
            }
            let busy: Option<i64> = tx
                .query_row(
                    "SELECT id FROM change_requests WHERE state = 'applying' AND id != ?1 LIMIT 1",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let (Some(other), E::Apply) = (busy, event) {
                return Err(StoreError::Stale(format!(
                    "change {other} is being applied: wait for it (`portwarden change show {other}`), then request this one again if it is stale"
                )));
            }
        }
        match portwarden_core::change::step(&row.change, event, now) {
            Ok(t) => {
                let step = Step {
                    actor,
                    event,
                    reason,
                    txn,
                };
                write_step(&tx, self.key.as_ref(), now, &row, &t.change, step)?;
                let row = change_by_id(&tx, self.key.as_ref(), id)
                    .map_err(backend)?
                    .ok_or(StoreError::NoChange(id))?;
                tx.commit().map_err(backend)?;
                self.committed()?;
                Ok(row)
            }
            Err(cause) => {
                // The refusal is on the record too; the request stays as it was.
                let e = append(
                    &tx,
                    now,
                    Change {
                        actor: actor.to_string(),
                        action: "change.refused".into(),
                        subject: format!("change:{id}"),
                        before: Some(from.clone()),
                        after: Some(from),
                        reason: Some(format!("{}: {cause}", event.as_str())),
                    },
                )
                .map_err(backend)?;
                seal_change(&tx, self.key.as_ref(), id, e.seq)?;
                tx.commit().map_err(backend)?;
                self.committed()?;
                Err(StoreError::Change { id, cause })
            }
        }
    }

    fn policy_current(&self) -> Result<Option<PolicyAdoption>, StoreError> {
        current_adoption(&self.conn, self.key.as_ref()).map_err(backend)
    }

    fn policy_history(&self) -> Result<Vec<PolicyAdoption>, StoreError> {
        adoptions(&self.conn, self.key.as_ref()).map_err(backend)
    }

    fn policy_version(&self, hash: &str) -> Result<PolicyVersion, StoreError> {
        let h = hash.to_ascii_lowercase();
        if h.len() < 6 || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NoVersion(format!(
                "`{hash}` is not a policy version: write at least 6 hex digits of its hash (`portwarden policy history` lists them)"
            )));
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT hash, text, first_seen, author FROM policy_versions WHERE substr(hash, 1, length(?1)) = ?1 LIMIT 2",
            )
            .map_err(backend)?;
        let found = st
            .query_map([&h], |r| {
                Ok(PolicyVersion {
                    hash: r.get(0)?,
                    text: r.get(1)?,
                    first_seen: r.get(2)?,
                    author: r.get(3)?,
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        match found.as_slice() {
            [v] => {
                // The hash vouches for the text: a text edited in the store is refused.
                let real = crate::policy_version_of(&v.text);
                if real != v.hash {
                    return Err(StoreError::NoVersion(format!(
                        "policy version {} was altered in the store (its text hashes to {}): refusing to use it",
                        short_hash(&v.hash),
                        short_hash(&real)
                    )));
                }
                Ok(v.clone())
            }
            [] => Err(StoreError::NoVersion(format!(
                "no policy version {hash} (`portwarden policy history` lists them)"
            ))),
            _ => Err(StoreError::NoVersion(format!(
                "`{hash}` names more than one policy version: write more of its hash"
            ))),
        }
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY name"))
            .map_err(backend)?;
        let rows = st.query_map([], token_row).map_err(backend)?;
        rows.map(|r| r.map(|(t, _)| t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
    }

    fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE sha256 = ?1"),
                [sha256],
                token_row,
            )
            .optional()
            .map_err(backend)?;
        let (Some((t, Some(mac))), Some(k)) = (row, &self.key) else {
            return Ok(None);
        };
        let vouched = mac_seq(&mac).is_some_and(|seq| token_mac(k, seq, &t) == mac);
        Ok(vouched.then_some(t))
    }

    fn token_revoke(&mut self, now: i64, actor: &str, name: &str) -> Result<bool, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let role: Option<String> = tx
            .query_row("SELECT role FROM tokens WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?;
        let Some(role) = role else {
            return Ok(false);
        };
        tx.execute("DELETE FROM tokens WHERE name = ?1", [name])
            .map_err(backend)?;
        append(
            &tx,
            now,
            Change {
                actor: actor.to_string(),
                action: "token.revoke".into(),
                subject: format!("token:{name}"),
                before: Some(format!("role {role}")),
                after: None,
                reason: None,
            },
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(true)
    }

    fn fw_txns(&self) -> Result<Vec<FwTxn>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {TXN_COLS} FROM fw_txn ORDER BY id"))
            .map_err(backend)?;
        let rows = st.query_map([], txn_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn fw_finish(
        &mut self,
        id: i64,
        to: FwState,
        now: i64,
        actor: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let state = match to {
            FwState::Confirmed => "confirmed",
            FwState::RolledBack => "rolled-back",
            FwState::Pending => "pending",
        };
        let n = tx
            .execute(
                "UPDATE fw_txn SET state = ?2 WHERE id = ?1 AND state = 'pending'",
                params![id, state],
            )
            .map_err(backend)?;
        if n == 1 {
            append(
                &tx,
                now,
                Change {
                    actor: actor.to_string(),
                    action: finish_action(to).into(),
                    subject: format!("fw txn {id}"),
                    before: None,
                    after: self
                        .key
                        .as_ref()
                        .map(|k| format!("mac:{}", k.mac(finish_message(id, to).as_bytes()))),
                    reason: Some(reason.to_string()),
                },
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(n == 1)
    }

    fn record_batch(&mut self, now: i64, changes: Vec<Change>) -> Result<usize, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let n = changes.len();
        for c in changes {
            append(&tx, now, c).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(n)
    }

    fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT protocol, port, exe, sha256, first_seen, last_seen FROM identities \
                 ORDER BY port, protocol",
            )
            .map_err(backend)?;
        let rows = st.query_map([], identity_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn record_identities(
        &mut self,
        seen: &[Identity],
        now: i64,
        actor: &str,
    ) -> Result<Vec<(Identity, Identity)>, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let mut changed = Vec::new();
        for id in seen {
            let old: Option<Identity> = tx
                .query_row(
                    "SELECT protocol, port, exe, sha256, first_seen, last_seen FROM identities \
                     WHERE protocol = ?1 AND port = ?2",
                    params![id.protocol.as_str(), id.port.get()],
                    identity_row,
                )
                .optional()
                .map_err(backend)?;
            match old {
                Some(o) if o.exe == id.exe && o.sha256 == id.sha256 => {
                    tx.execute(
                        "UPDATE identities SET last_seen = ?3 WHERE protocol = ?1 AND port = ?2",
                        params![id.protocol.as_str(), id.port.get(), now],
                    )
                    .map_err(backend)?;
                }
                old => {
                    tx.execute(
                        "INSERT INTO identities (protocol, port, exe, sha256, first_seen, last_seen) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (protocol, port) DO UPDATE SET \
                         exe = excluded.exe, sha256 = excluded.sha256, first_seen = excluded.first_seen, \
                         last_seen = excluded.last_seen",
                        params![id.protocol.as_str(), id.port.get(), id.exe, id.sha256, now],
                    )
                    .map_err(backend)?;
                    let new = Identity {
                        first_seen: now,
                        last_seen: now,
                        ..id.clone()
                    };
                    append(
                        &tx,
                        now,
                        Change {
                            actor: actor.to_string(),
                            action: if old.is_some() {
                                "identity.changed".into()
                            } else {
                                "identity.first-seen".into()
                            },
                            subject: format!("{}/{}", id.port, id.protocol),
                            before: old.as_ref().and_then(json),
                            after: json(&new),
                            reason: None,
                        },
                    )
                    .map_err(backend)?;
                    if let Some(o) = old {
                        changed.push((o, new));
                    }
                }
            }
        }
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(changed)
    }

    fn record(&mut self, now: i64, change: Change) -> Result<Entry, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        let e = append(&tx, now, change).map_err(backend)?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(e)
    }

    fn ledger(&self, since: Option<i64>) -> Result<Vec<Entry>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {ENTRY_COLS} FROM ledger WHERE ts >= ?1 ORDER BY seq"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map([since.unwrap_or(i64::MIN)], entry_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn verify_ledger_expecting(
        &self,
        expect: Option<(i64, &str)>,
    ) -> Result<Verification, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {ENTRY_COLS}, rowid FROM ledger ORDER BY seq"
            ))
            .map_err(backend)?;
        let mut entries = Vec::new();
        let mut damaged = None;
        let rows = st.query_map([], tolerant_entry).map_err(backend)?;
        for r in rows {
            match r.map_err(backend)? {
                Ok(e) => entries.push(e),
                Err(bad) => {
                    damaged = Some(bad);
                    break;
                }
            }
        }
        let mut v = ledger::verify(&entries);
        if let Some((seq, why)) = damaged {
            if v.broken.as_ref().is_none_or(|(s, _)| *s > seq) {
                v.broken = Some((seq, why));
            }
        }
        v.problems.extend(self.unvouched_rows()?);
        for (name, table) in foreign_triggers(&self.conn)? {
            v.problems.push(format!(
                "trigger `{name}` on table {table} was not created by portwarden: it can change, add or silently drop records (`log verify --repair` drops it)"
            ));
        }
        for (t, state) in trigger_states(&self.conn)? {
            match state {
                TriggerState::Intact => {}
                TriggerState::Missing => v.problems.push(format!(
                    "the append-only trigger `{t}` is missing: records could be changed or deleted (`log verify --repair` re-creates it)"
                )),
                TriggerState::Changed => v.problems.push(format!(
                    "the append-only trigger `{t}` does not have the SQL portwarden created it with: records could be changed or deleted (`log verify --repair` re-creates it)"
                )),
            }
        }
        let gate: i64 = self
            .conn
            .query_row("SELECT coalesce(max(open), 1) FROM ledger_gate", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        if gate != 0 {
            v.problems.push(
                "the retention gate is open: deletes are not refused (`log verify --repair` closes it)".into(),
            );
        }
        match self.anchor.read() {
            Ok(Some(a)) => {
                v.check_head(&entries, a.seq, &a.hash, "the head anchor");
                if let (Some(f), Some(p)) = (v.first_seq, a.pruned) {
                    if f > p + 1 {
                        v.problems.push(format!(
                            "the chain starts at seq {f}, but retention pruned only through seq {p} (the head anchor says): records {} to {} were deleted and a checkpoint forged over them",
                            p + 1,
                            f - 1
                        ));
                    }
                }
            }
            Ok(None) => v.problems.push(format!(
                "the head anchor {} is missing: truncation cannot be told from a short chain",
                self.anchor.path().display()
            )),
            Err(e) => v
                .problems
                .push(format!("the head anchor is unreadable: {e}")),
        }
        if let Some((seq, hash)) = expect {
            v.check_head(&entries, seq, hash, "the expected head");
        }
        let end = v.head.as_ref().map_or(0, |h| h.0);
        for (what, sql) in [
            (
                "lease",
                "SELECT id, ledger_seq FROM leases WHERE ledger_seq > ?1",
            ),
            (
                "firewall transaction",
                "SELECT id, ledger_seq FROM fw_txn WHERE ledger_seq > ?1",
            ),
        ] {
            let mut st = self.conn.prepare(sql).map_err(backend)?;
            let rows = st
                .query_map([end], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            for r in rows {
                let (id, seq) = r.map_err(backend)?;
                v.problems.push(format!(
                    "{what} {id} was recorded at ledger seq {seq}, beyond the head {end}: records were deleted"
                ));
            }
        }
        Ok(v)
    }

    fn repair_ledger(&mut self, now: i64, actor: &str) -> Result<Vec<String>, StoreError> {
        // A missing anchor or key is what repair is for; any other refusal stands.
        if !self.repairable || self.refused.is_none() {
            self.writable()?;
        } else if self.read_only {
            return Err(StoreError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let adopt = self.anchor_missing;
        let new_key = if self.key_missing {
            Some(self.create_key()?)
        } else {
            None
        };
        let tx = immediate(&mut self.conn)?;
        let mut done = Vec::new();
        if let Some(k) = &new_key {
            vouch_rows(&tx, k)?;
            done.push(
                "made a new host key (the old one is gone) and vouched for the grants and leases as they are; transactions applied under the old key are never rolled back to"
                    .to_string(),
            );
        }
        for (name, table) in foreign_triggers(&tx)? {
            // Quoted as an identifier: the name comes from the file.
            tx.execute_batch(&format!("DROP TRIGGER \"{}\";", name.replace('"', "\"\"")))
                .map_err(backend)?;
            done.push(format!(
                "dropped trigger {name} on {table}, which portwarden did not create"
            ));
        }
        if adopt {
            done.push(format!(
                "adopted the chain's head as the missing head anchor {}",
                self.anchor.path().display()
            ));
        }
        for (name, state) in trigger_states(&tx)? {
            if state != TriggerState::Intact {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {name};"))
                    .map_err(backend)?;
                done.push(format!(
                    "re-created trigger {name} ({})",
                    if state == TriggerState::Missing {
                        "it was missing"
                    } else {
                        "its SQL had been changed"
                    }
                ));
            }
        }
        tx.execute_batch(TRIGGERS).map_err(backend)?;
        let n = tx
            .execute(
                "UPDATE ledger_gate SET open = 0 WHERE id = 1 AND open != 0",
                [],
            )
            .map_err(backend)?;
        if n > 0 {
            done.push("closed the retention gate".into());
        }
        if !done.is_empty() {
            append(
                &tx,
                now,
                Change {
                    actor: actor.to_string(),
                    action: "ledger.repair".into(),
                    subject: "ledger".into(),
                    before: None,
                    after: Some(done.join("; ")),
                    reason: Some("log verify --repair".into()),
                },
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        if new_key.is_some() {
            self.key = new_key;
            self.key_missing = false;
            self.refused = None;
            self.check_anchor()?;
        }
        if adopt {
            let held = self.anchor.lock().map_err(|source| StoreError::Io {
                context: "cannot lock the head anchor".into(),
                cause: source,
            })?;
            self.adopt_anchor(&held)?;
            drop(held);
            self.anchor_missing = false;
            self.refused = None;
            self.check_anchor()?;
        }
        self.committed()?;
        Ok(done)
    }

    fn prune_ledger(&mut self, cutoff: i64, now: i64, actor: &str) -> Result<i64, StoreError> {
        self.writable()?;
        let tx = immediate(&mut self.conn)?;
        // Only the unbroken run of old records at the start: one record with an old
        // timestamp appended later (a stepped clock, or a forgery) must not take the
        // whole history with it.
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM ledger WHERE ts < ?1 AND seq < \
                 coalesce((SELECT min(seq) FROM ledger WHERE ts >= ?1), 9223372036854775807) \
                 ORDER BY seq DESC LIMIT 1",
                [cutoff],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let Some((through_seq, through_hash)) = last else {
            return Ok(0);
        };
        let deleted: i64 = tx
            .query_row(
                "SELECT count(*) FROM ledger WHERE seq <= ?1",
                [through_seq],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let cp = Checkpoint {
            through_seq,
            through_hash,
            deleted,
        };
        append(
            &tx,
            now,
            Change {
                actor: actor.to_string(),
                action: CHECKPOINT.into(),
                subject: "ledger".into(),
                before: None,
                after: json(&cp),
                reason: Some(format!(
                    "retention: records before {}",
                    portwarden_core::time::utc(cutoff)
                )),
            },
        )
        .map_err(backend)?;
        tx.execute("UPDATE ledger_gate SET open = 1 WHERE id = 1", [])
            .map_err(backend)?;
        tx.execute("DELETE FROM ledger WHERE seq <= ?1", [through_seq])
            .map_err(backend)?;
        tx.execute("UPDATE ledger_gate SET open = 0 WHERE id = 1", [])
            .map_err(backend)?;
        // The anchor allows the cut before it is made.
        self.anchor
            .allow_pruned(through_seq)
            .map_err(|source| StoreError::Io {
                context: "cannot record the retention point in the head anchor".into(),
                cause: source,
            })?;
        tx.commit().map_err(backend)?;
        self.committed()?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_store_migrates_and_keeps_its_data() {
        let dir = std::env::temp_dir().join(format!("pw-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(TRIGGERS).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO leases (scope, protocol, port, service, owner, state, created_at, expires_at) \
                 VALUES ('local', 'tcp', 20001, 'svc', 'alice', 'planned', 1, 2)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&dir, "local", false).unwrap();
        let ver: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ver, SCHEMA_VERSION);
        assert_eq!(s.leases().unwrap().len(), 1);
        assert!(s.identities().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
