//! The embedded store: SQLite in WAL mode. Every mutation runs in a `BEGIN IMMEDIATE`
//! transaction and appends its ledger record in the same transaction. One row per
//! (scope, protocol, port) makes a double claim a constraint violation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portwarden_core::alloc::{AllocError, LeaseState, ReclaimAction};
use portwarden_core::{Port, Protocol};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::ledger::{self, CHECKPOINT, Change, Checkpoint, Entry, Verification};
use crate::{FwState, FwTxn, Identity, Lease, LeaseProbe, NewLease, Reclaimed, Store, StoreError};

/// SQLite `application_id` of a portwarden store: "PWRD".
pub const APPLICATION_ID: i64 = 0x5057_5244;
/// Current schema version (`user_version`).
pub const SCHEMA_VERSION: i64 = 3;
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
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
WHEN (SELECT open FROM ledger_gate WHERE id = 1) = 0
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"#;

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

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    scope: String,
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
    pub fn open(dir: &Path, scope: &str, create: bool) -> Result<SqliteStore, StoreError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            if !create {
                return Err(StoreError::Missing(path));
            }
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                context: format!("cannot create state directory {}", dir.display()),
                source,
            })?;
        }
        let flags = if create {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| classify(&path, e))?;
        conn.busy_handler(Some(busy)).map_err(backend)?;
        let mut s = SqliteStore {
            conn,
            path,
            scope: scope.to_string(),
        };
        s.prepare()?;
        Ok(s)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks identity and version read-only, then initialises or migrates.
    fn prepare(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let read = |c: &Connection| -> rusqlite::Result<(i64, i64, i64)> {
            let app: i64 = c.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            let ver: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let tables: i64 =
                c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            Ok((app, ver, tables))
        };
        let (app, ver, tables) = read(&self.conn).map_err(|e| classify(&path, e))?;
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
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| classify(&path, e))?;
        // NORMAL in WAL: a commit survives a crash of any process; the last commits may
        // be lost on power failure. BENCHMARKS.md states this with the figures.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
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
                tx.execute_batch(SCHEMA_V1).map_err(backend)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(backend)?;
            }
            if ver < 2 {
                tx.execute_batch(SCHEMA_V2).map_err(backend)?;
            }
            if ver < 3 {
                tx.execute_batch(SCHEMA_V3).map_err(backend)?;
            }
            if ver < SCHEMA_VERSION {
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
        }
        Ok(())
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            StoreError::Io {
                context: format!("cannot open {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string()),
            }
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

const LEASE_COLS: &str = "id, scope, protocol, port, service, pool, owner, process, state, \
                          created_at, expires_at, last_seen_listening, missed";

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
    ])?;
    Ok(e)
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
    })
}

const TXN_COLS: &str = "id, created, deadline, state, snapshot, ruleset, listing, actor";

impl Store for SqliteStore {
    fn fw_begin(
        &mut self,
        now: i64,
        actor: &str,
        deadline: Option<i64>,
        snapshot: Option<String>,
        ruleset: &str,
    ) -> Result<FwTxn, StoreError> {
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
        let t = tx
            .query_row(
                &format!("SELECT {TXN_COLS} FROM fw_txn WHERE id = ?1"),
                [id],
                txn_row,
            )
            .map_err(backend)?;
        append(
            &tx,
            now,
            Change {
                actor: actor.to_string(),
                action: "fw.apply".into(),
                subject: format!("fw txn {id}"),
                before: snapshot.clone(),
                after: Some(ruleset.to_string()),
                reason: Some(match deadline {
                    Some(d) => format!("pending, rolls back at {d} unless confirmed"),
                    None => "applied without confirmation".into(),
                }),
            },
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(t)
    }

    fn fw_set_listing(&mut self, id: i64, listing: &str) -> Result<(), StoreError> {
        let tx = immediate(&mut self.conn)?;
        tx.execute(
            "UPDATE fw_txn SET listing = ?2 WHERE id = ?1",
            params![id, listing],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
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
                    action: if to == FwState::Confirmed {
                        "fw.confirm".into()
                    } else {
                        "fw.rollback".into()
                    },
                    subject: format!("fw txn {id}"),
                    before: None,
                    after: None,
                    reason: Some(reason.to_string()),
                },
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(n == 1)
    }

    fn record_batch(&mut self, now: i64, changes: Vec<Change>) -> Result<usize, StoreError> {
        let tx = immediate(&mut self.conn)?;
        let n = changes.len();
        for c in changes {
            append(&tx, now, c).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
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
        Ok(changed)
    }

    fn allocate(
        &mut self,
        now: i64,
        actor: &str,
        decide: &mut dyn FnMut(&mut dyn LeaseProbe) -> Result<NewLease, AllocError>,
    ) -> Result<Lease, StoreError> {
        let scope = self.scope.clone();
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
                 created_at, expires_at, missed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'planned', ?8, ?9, 0) \
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
                    new.expires_at
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
        };
        append(
            &tx,
            now,
            lease_change(actor, "lease.alloc", &lease, None, json(&lease), None),
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(lease)
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {LEASE_COLS} FROM leases ORDER BY scope, port, protocol"
            ))
            .map_err(backend)?;
        let rows = st.query_map([], lease_row).map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn renew(
        &mut self,
        id: i64,
        caller: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
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
        append(
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
        tx.commit().map_err(backend)?;
        Ok(after)
    }

    fn release(
        &mut self,
        id: i64,
        caller: &str,
        now: i64,
        actor: &str,
    ) -> Result<Lease, StoreError> {
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
        Ok(before)
    }

    fn reclaim(
        &mut self,
        now: i64,
        actor: &str,
        listening: &dyn Fn(&Lease) -> bool,
        decide: &dyn Fn(&Lease, bool) -> Option<ReclaimAction>,
        dry_run: bool,
    ) -> Result<Vec<Reclaimed>, StoreError> {
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
                append(
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
                    append(
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
        }
        Ok(out)
    }

    fn record(&mut self, now: i64, change: Change) -> Result<Entry, StoreError> {
        let tx = immediate(&mut self.conn)?;
        let e = append(&tx, now, change).map_err(backend)?;
        tx.commit().map_err(backend)?;
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

    fn verify_ledger(&self) -> Result<Verification, StoreError> {
        Ok(ledger::verify(&self.ledger(None)?))
    }

    fn prune_ledger(&mut self, cutoff: i64, now: i64, actor: &str) -> Result<i64, StoreError> {
        let tx = immediate(&mut self.conn)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM ledger WHERE ts < ?1 ORDER BY seq DESC LIMIT 1",
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
                reason: Some(format!("retention: records before {cutoff}")),
            },
        )
        .map_err(backend)?;
        tx.execute("UPDATE ledger_gate SET open = 1 WHERE id = 1", [])
            .map_err(backend)?;
        tx.execute("DELETE FROM ledger WHERE seq <= ?1", [through_seq])
            .map_err(backend)?;
        tx.execute("UPDATE ledger_gate SET open = 0 WHERE id = 1", [])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
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
