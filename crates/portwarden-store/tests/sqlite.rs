//! The SQLite store against a real database file: leases, owner checks, the ledger chain,
//! its triggers, tampering, retention, and refusing foreign or corrupt files.

use std::collections::HashSet;

use portwarden_core::alloc::{AllocError, ReclaimAction, ReclaimReason};
use portwarden_core::{Port, Protocol};
use portwarden_store::{Journal, NewLease, SqliteStore, StoreError};
use proptest::prelude::*;

use portwarden_testkit::tempdir;

fn lease_for(port: u16, owner: &str) -> NewLease {
    NewLease {
        scope: "local".into(),
        protocol: Protocol::Tcp,
        port: Port::new(port).unwrap(),
        service: "svc".into(),
        pool: Some("p".into()),
        owner: owner.into(),
        process: None,
        expires_at: 10_000,
        ttl_max: None,
    }
}

/// Allocates the first free port of 20000..20000+size.
fn alloc(s: &mut SqliteStore, size: u16, owner: &str, now: i64) -> Result<u16, StoreError> {
    let l = s.allocate(now, "test", &mut |probe| {
        for p in 20000..20000 + size {
            if !probe.is_leased(Protocol::Tcp, Port::new(p).unwrap()) {
                return Ok(lease_for(p, owner));
            }
        }
        Err(AllocError::NoSource)
    })?;
    Ok(l.port.get())
}

#[test]
fn release_and_renew_are_owner_checked() {
    let d = tempdir("owner");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let p = alloc(&mut s, 10, "alice", 100).unwrap();
    let id = s.leases().unwrap()[0].id;
    assert!(matches!(
        s.release(id, "mallory", 101, "mallory"),
        Err(StoreError::NotOwner { .. })
    ));
    assert!(matches!(
        s.renew(id, "mallory", 99_999, 101, "mallory"),
        Err(StoreError::NotOwner { .. })
    ));
    assert_eq!(s.leases().unwrap().len(), 1);
    let r = s.renew(id, "alice", 20_000, 102, "alice").unwrap();
    assert_eq!(r.expires_at, 20_000);
    assert_eq!(s.release(id, "alice", 103, "alice").unwrap().port.get(), p);
    assert!(s.leases().unwrap().is_empty());
    assert!(matches!(
        s.release(id, "alice", 104, "alice"),
        Err(StoreError::NotFound(_))
    ));
    let actions: Vec<String> = s
        .ledger(None)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["lease.alloc", "lease.renew", "lease.release"]);
    assert_eq!(s.verify_ledger().unwrap().broken, None);
}

#[test]
fn a_double_claim_fails_and_writes_nothing() {
    let d = tempdir("double");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.allocate(1, "t", &mut |_| Ok(lease_for(20001, "a")))
        .unwrap();
    let before = s.ledger(None).unwrap().len();
    assert!(
        s.allocate(2, "t", &mut |_| Ok(lease_for(20001, "b")))
            .is_err()
    );
    assert_eq!(s.leases().unwrap().len(), 1);
    assert_eq!(s.ledger(None).unwrap().len(), before);
    // A refused decision writes nothing either.
    assert!(matches!(
        s.allocate(3, "t", &mut |_| Err(AllocError::NoSource)),
        Err(StoreError::Refused(_))
    ));
    assert_eq!(s.ledger(None).unwrap().len(), before);
}

#[test]
fn ledger_triggers_refuse_update_and_delete() {
    let d = tempdir("triggers");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    alloc(&mut s, 5, "a", 1).unwrap();
    let c = rusqlite::Connection::open(s.path()).unwrap();
    assert!(c.execute("UPDATE ledger SET actor = 'x'", []).is_err());
    assert!(c.execute("DELETE FROM ledger", []).is_err());
    assert_eq!(s.ledger(None).unwrap().len(), 1);
}

#[test]
fn any_changed_byte_is_reported_at_its_seq() {
    let d = tempdir("tamper");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for i in 0..8 {
        alloc(&mut s, 50, &format!("o{i}"), 100 + i).unwrap();
    }
    let path = s.path().to_path_buf();
    drop(s);
    let cols = [
        "ts",
        "actor",
        "action",
        "subject",
        "after",
        "prev_hash",
        "hash",
    ];
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;")
        .unwrap();
    for seq in 1..=8i64 {
        for col in cols {
            let original: rusqlite::types::Value = c
                .query_row(
                    &format!("SELECT {col} FROM ledger WHERE seq = ?1"),
                    [seq],
                    |r| r.get(0),
                )
                .unwrap();
            let changed = match &original {
                rusqlite::types::Value::Integer(i) => rusqlite::types::Value::Integer(i ^ 1),
                rusqlite::types::Value::Text(t) => {
                    let mut b = t.clone().into_bytes();
                    let k = (seq as usize * 7) % b.len();
                    b[k] = if b[k] == b'0' { b'1' } else { b'0' };
                    rusqlite::types::Value::Text(String::from_utf8(b).unwrap())
                }
                other => panic!("unexpected {other:?}"),
            };
            c.execute(
                &format!("UPDATE ledger SET {col} = ?1 WHERE seq = ?2"),
                rusqlite::params![changed, seq],
            )
            .unwrap();
            let s = SqliteStore::open(&d, "local", false).unwrap();
            let v = s.verify_ledger().unwrap();
            assert_eq!(
                v.broken.as_ref().map(|b| b.0),
                Some(seq),
                "{col} at seq {seq}: {v:?}"
            );
            drop(s);
            c.execute(
                &format!("UPDATE ledger SET {col} = ?1 WHERE seq = ?2"),
                rusqlite::params![original, seq],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&d, "local", false).unwrap();
    assert_eq!(s.verify_ledger().unwrap().broken, None);
}

#[test]
fn retention_prunes_through_a_checkpoint() {
    let d = tempdir("retention");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for i in 0..6 {
        alloc(&mut s, 50, "a", 1000 * (i + 1)).unwrap();
    }
    let deleted = s.prune_ledger(3500, 7000, "portwarden").unwrap();
    assert_eq!(deleted, 3);
    let l = s.ledger(None).unwrap();
    assert_eq!(l.first().unwrap().seq, 4);
    assert_eq!(l.last().unwrap().action, "ledger.checkpoint");
    assert_eq!(s.verify_ledger().unwrap().broken, None);
    // Deleting behind a checkpoint's back is still caught.
    drop(s);
    let c = rusqlite::Connection::open(d.join("portwarden.db")).unwrap();
    c.execute_batch("DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE seq = 4;")
        .unwrap();
    let s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(s.verify_ledger().unwrap().broken.is_some());
}

#[test]
fn reclaim_retires_and_drains_with_dry_run() {
    let d = tempdir("reclaim");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    alloc(&mut s, 5, "a", 1).unwrap();
    alloc(&mut s, 5, "b", 1).unwrap();
    let listening = |l: &portwarden_store::Lease| l.owner == "b";
    let decide = |l: &portwarden_store::Lease, heard: bool| {
        portwarden_core::alloc::reclaim_decision(&l.view(), heard, None, 20_000)
    };
    let dry = s.reclaim(20_000, "t", &listening, &decide, true).unwrap();
    assert_eq!(dry.len(), 2);
    assert_eq!(s.leases().unwrap().len(), 2, "dry run writes nothing");
    let done = s.reclaim(20_000, "t", &listening, &decide, false).unwrap();
    let acts: HashSet<String> = done
        .iter()
        .map(|r| format!("{}:{:?}", r.lease.owner, r.action))
        .collect();
    assert!(acts.contains(&format!(
        "a:{:?}",
        ReclaimAction::Retire(ReclaimReason::Expired)
    )));
    assert!(acts.contains(&format!("b:{:?}", ReclaimAction::Drain)));
    let left = s.leases().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].owner, "b");
    assert_eq!(s.verify_ledger().unwrap().broken, None);
}

#[test]
fn foreign_and_corrupt_files_are_refused_untouched() {
    let d = tempdir("foreign");
    let path = d.join("portwarden.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE customers (id INTEGER); INSERT INTO customers VALUES (1);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        SqliteStore::open(&d, "local", true),
        Err(StoreError::Foreign { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let d = tempdir("corrupt");
    let path = d.join("portwarden.db");
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &junk).unwrap();
    let e = SqliteStore::open(&d, "local", true).err().expect("refused");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), junk);
    assert!(!d.join("portwarden.db-wal").exists());
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u8),
    Release(u8, u8),
    Renew(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Alloc),
        (0u8..3, 0u8..16).prop_map(|(o, k)| Op::Release(o, k)),
        (0u8..3, 0u8..16).prop_map(|(o, k)| Op::Renew(o, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn leases_stay_unique_owners_hold_and_the_chain_verifies(ops in prop::collection::vec(op(), 1..60)) {
        let d = tempdir("prop");
        let mut s = SqliteStore::open(&d, "local", true).unwrap();
        let owners = ["alice", "bob", "carol"];
        for (t, o) in ops.iter().enumerate() {
            let now = t as i64;
            match o {
                Op::Alloc(who) => { let _ = alloc(&mut s, 8, owners[*who as usize], now); }
                Op::Release(who, k) | Op::Renew(who, k) => {
                    let leases = s.leases().unwrap();
                    if leases.is_empty() { continue; }
                    let l = &leases[*k as usize % leases.len()];
                    let caller = owners[*who as usize];
                    let r = match o {
                        Op::Release(..) => s.release(l.id, caller, now, caller).map(|_| ()),
                        _ => s.renew(l.id, caller, now + 100, now, caller).map(|_| ()),
                    };
                    prop_assert_eq!(r.is_ok(), l.owner == caller, "owner check for {:?}", o);
                }
            }
            let leases = s.leases().unwrap();
            let ports: HashSet<u16> = leases.iter().map(|l| l.port.get()).collect();
            prop_assert_eq!(ports.len(), leases.len(), "a port leased twice");
        }
        prop_assert_eq!(s.verify_ledger().unwrap().broken, None);
        let _ = std::fs::remove_dir_all(&d);
    }
}

fn change(n: usize) -> portwarden_store::Change {
    portwarden_store::Change {
        actor: "test".into(),
        action: "test.record".into(),
        subject: format!("record {n}"),
        ..Default::default()
    }
}

/// A raw connection, as an attacker with write access to the file would have.
fn raw(d: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(d.join(portwarden_store::DB_FILE)).unwrap()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    portwarden_store::ledger::hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// A fresh store with one apply whose snapshot is an empty table of ours.
fn with_apply(
    tag: &str,
    deadline: Option<i64>,
) -> (
    portwarden_testkit::Dir,
    SqliteStore,
    portwarden_store::FwTxn,
) {
    let d = tempdir(tag);
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let t = s
        .fw_begin(
            100,
            "op",
            deadline,
            Some("table inet portwarden {\n}\n".into()),
            "x",
        )
        .unwrap();
    (d, s, t)
}

/// A store in `d` with one grant (9000/tcp from 10.0.0.9) and one lease (port 20000).
fn grant_and_lease(d: &std::path::Path) {
    let mut s = SqliteStore::open(d, "local", true).unwrap();
    s.grant(
        100,
        &[portwarden_store::GrantRecord {
            addr: "10.0.0.9".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: Port::new(9000).unwrap(),
            expires_at: 10_000,
            actor: "op".into(),
        }],
    )
    .unwrap();
    alloc(&mut s, 10, "alice", 100).unwrap();
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn r_state_dir_trust() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe_euid() != 0 {
        eprintln!("SKIP: state-dir trust applies to root only");
        return;
    }
    let parent = tempdir("trust");
    let d = parent.join("state");
    drop(SqliteStore::open(&d, "local", true).unwrap());
    assert_eq!(mode(&d), 0o700, "created 0700");
    assert_eq!(
        mode(&d.join(portwarden_store::DB_FILE)),
        0o600,
        "created 0600"
    );
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = SqliteStore::open(&d, "local", true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("writable by group and others") && e.contains("chmod 700"),
        "{e}"
    );
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = d.join(portwarden_store::DB_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = SqliteStore::open(&d, "local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("store file") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&d, Some(4321), None).unwrap();
    let e = SqliteStore::open(&d, "local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("belongs to uid 4321") && e.contains("chown root"),
        "{e}"
    );
    std::os::unix::fs::chown(&d, Some(0), None).unwrap();
    assert!(SqliteStore::open(&d, "local", false).is_ok());
    // A parent others can write could swap the whole directory; a sticky one (/tmp) not.
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = SqliteStore::open(&d, "local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("its parent") && e.contains("go-w"), "{e}");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(SqliteStore::open(&d, "local", false).is_ok());
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The host key is a secret: readable by others, it is refused.
    let key = d.join(portwarden_store::key::KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = SqliteStore::open(&d, "local", false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("host key") && e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The anchor's lock file is a store file too.
    let lock = d.join(portwarden_store::anchor::LOCK_FILE);
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(SqliteStore::open(&d, "local", false).is_err());
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(SqliteStore::open(&d, "local", false).is_ok());
}

fn unsafe_euid() -> u32 {
    portwarden_store::trust::euid()
}

#[test]
fn r_truncated_or_missing_database_is_not_reinitialised() {
    let d = tempdir("trunc");
    {
        let mut s = SqliteStore::open(&d, "local", true).unwrap();
        for n in 0..3 {
            s.record(100, change(n)).unwrap();
        }
    }
    let db = d.join(portwarden_store::DB_FILE);
    // Truncated to zero bytes (its WAL gone too).
    std::fs::write(&db, b"").unwrap();
    let _ = std::fs::remove_file(d.join(format!("{}-wal", portwarden_store::DB_FILE)));
    let _ = std::fs::remove_file(d.join(format!("{}-shm", portwarden_store::DB_FILE)));
    for create in [true, false] {
        let e = SqliteStore::open(&d, "local", create).err().unwrap();
        assert!(matches!(e, StoreError::Truncated(_)), "{e}");
        assert!(e.to_string().contains("is empty"), "{e}");
    }
    assert_eq!(
        std::fs::metadata(&db).unwrap().len(),
        0,
        "nothing written over it"
    );
    // Deleted: the same.
    std::fs::remove_file(&db).unwrap();
    let e = SqliteStore::open(&d, "local", true).err().unwrap();
    assert!(e.to_string().contains("is missing"), "{e}");
    assert!(!db.exists());
    // Replaced by a fresh, empty SQLite database: the same.
    drop(raw(&d));
    let e = SqliteStore::open(&d, "local", true).err().unwrap();
    assert!(matches!(e, StoreError::Truncated(_)), "{e}");
}

#[test]
fn r_deleted_records_and_dropped_triggers_are_detected() {
    let d = tempdir("deleted");
    let head = {
        let mut s = SqliteStore::open(&d, "local", true).unwrap();
        alloc(&mut s, 10, "alice", 100).unwrap();
        for n in 0..4 {
            s.record(100, change(n)).unwrap();
        }
        let v = s.verify_ledger().unwrap();
        assert!(v.ok(), "{v:?}");
        v.head.unwrap()
    };
    // The triggers dropped, the tail deleted.
    let c = raw(&d);
    c.execute_batch("DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE seq > 2;")
        .unwrap();
    drop(c);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(!v.ok());
    let all = v.problems.join("\n");
    assert!(all.contains("ledger_no_delete` is missing"), "{all}");
    assert!(
        all.contains("ends at seq 2, but the head anchor says it reached seq 5"),
        "{all}"
    );
    // An exported head is checked the same way.
    let v = s.verify_ledger_expecting(Some((head.0, &head.1))).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("the expected head")),
        "{v:?}"
    );
    // Nothing is written to a store behind its anchor.
    assert!(matches!(
        s.record(101, change(9)),
        Err(StoreError::Truncated(_))
    ));
    assert!(matches!(
        alloc(&mut s, 10, "bob", 101),
        Err(StoreError::Truncated(_))
    ));
    drop(s);
    // Everything deleted and the anchor moved aside: the lease still refers to seq 1.
    let c = raw(&d);
    c.execute_batch("DELETE FROM ledger;").unwrap();
    drop(c);
    std::fs::remove_file(d.join(portwarden_store::anchor::ANCHOR_FILE)).unwrap();
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("lease 1 was recorded at ledger seq 1, beyond the head 0")),
        "{v:?}"
    );
}

#[test]
fn r_repair_recreates_dropped_triggers() {
    let d = tempdir("repair");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.record(100, change(0)).unwrap();
    raw(&d)
        .execute_batch("DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;")
        .unwrap();
    assert_eq!(s.verify_ledger().unwrap().problems.len(), 2);
    let done = s.repair_ledger(101, "root").unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    let v = s.verify_ledger().unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(
        s.ledger(None).unwrap().last().unwrap().action,
        "ledger.repair"
    );
    assert!(
        raw(&d).execute("DELETE FROM ledger", []).is_err(),
        "append-only again"
    );
}

#[test]
fn r_first_open_under_concurrency() {
    // Eight first opens of a fresh directory at once, many times over.
    for round in 0..40 {
        let d = tempdir(&format!("race{round}"));
        let dir = d.join("state");
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let dir = dir.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s =
                        SqliteStore::open(&dir, "local", true).map_err(|e| e.to_string())?;
                    s.record(100, change(n)).map_err(|e| e.to_string())?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let s = SqliteStore::open(&dir, "local", false).unwrap();
        let v = s.verify_ledger().unwrap();
        assert!(v.ok() && v.records == 8, "round {round}: {v:?}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn r_corrupt_database_is_refused_before_any_write() {
    let d = tempdir("corrupt");
    {
        let mut s = SqliteStore::open(&d, "local", true).unwrap();
        for n in 0..200 {
            s.record(100, change(n)).unwrap();
        }
        // Everything into the main file, so that flipping its bytes is what damages it.
        drop(s);
        raw(&d)
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let db = d.join(portwarden_store::DB_FILE);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 4096 * 3);
    // Flip the page headers of every page after the first.
    for page in 1..bytes.len() / 4096 {
        for b in &mut bytes[page * 4096..page * 4096 + 16] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&db, &bytes).unwrap();
    let e = SqliteStore::open(&d, "local", true).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&db.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&db).unwrap(), bytes, "nothing written to it");
}

#[test]
fn r_verify_names_the_first_damaged_record() {
    let d = tempdir("damaged");
    let s = {
        let mut s = SqliteStore::open(&d, "local", true).unwrap();
        for n in 0..4 {
            s.record(100, change(n)).unwrap();
        }
        s
    };
    raw(&d)
        .execute_batch(
            "DROP TRIGGER ledger_no_update; UPDATE ledger SET hash = X'00ff' WHERE seq = 3;",
        )
        .unwrap();
    let v = s.verify_ledger().unwrap();
    let (seq, why) = v.broken.clone().unwrap();
    assert_eq!(seq, 3, "{why}");
    assert!(why.contains("`hash` is a blob, not text"), "{why}");
}

/// Appends a well-chained record as someone with write access to the file (and the
/// public hash function) would: the chain alone cannot tell it from ours.
fn forge(c: &rusqlite::Connection, change: portwarden_store::Change) -> i64 {
    forge_at(c, 500, change)
}

/// [`forge`] with the record's timestamp.
fn forge_at(c: &rusqlite::Connection, ts: i64, change: portwarden_store::Change) -> i64 {
    let (seq, hash): (i64, String) = c
        .query_row(
            "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let e = portwarden_store::ledger::next_entry(Some((seq, &hash)), ts, change);
    c.execute(
        "INSERT INTO ledger (seq, ts, actor, action, subject, before, after, reason, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            e.seq, e.ts, e.actor, e.action, e.subject, e.before, e.after, e.reason, e.prev_hash,
            e.hash
        ],
    )
    .unwrap();
    e.seq
}

#[test]
fn r_snapshot_vouched_only_by_the_first_apply_record() {
    let (d, s, t) = with_apply("forged-apply", Some(200));
    assert!(s.fw_verified_snapshot(&t).is_ok());
    drop(s);
    // The snapshot swapped, a later record vouching for it, the row pointed at it.
    let evil = "table inet portwarden { chain input { type filter hook input priority 0; policy accept; } }";
    let digest = format!("sha256:{}", sha256_hex(evil));
    let c = raw(&d);
    let seq = forge(
        &c,
        portwarden_store::Change {
            actor: "op".into(),
            action: "fw.apply".into(),
            subject: format!("fw txn {}", t.id),
            before: Some(digest),
            ..Default::default()
        },
    );
    c.execute(
        "UPDATE fw_txn SET snapshot = ?1, ledger_seq = ?2 WHERE id = ?3",
        rusqlite::params![evil, seq, t.id],
    )
    .unwrap();
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let e = s.fw_verified_snapshot(&t).unwrap_err();
    assert!(matches!(e, StoreError::SnapshotTampered { .. }), "{e}");
}

#[test]
fn r_forged_checkpoint_cannot_erase_history() {
    let d = tempdir("forged-checkpoint");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for n in 0..5 {
        s.record(100, change(n)).unwrap();
    }
    drop(s);
    // Records 1..3 deleted and a checkpoint forged at the end to explain them.
    let c = raw(&d);
    let through: String = c
        .query_row("SELECT hash FROM ledger WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    c.execute_batch("DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE seq <= 3;")
        .unwrap();
    forge(
        &c,
        portwarden_store::Change {
            actor: "portwarden".into(),
            action: portwarden_store::ledger::CHECKPOINT.into(),
            subject: "ledger".into(),
            after: Some(format!(
                r#"{{"through_seq":3,"through_hash":"{through}","deleted":3}}"#
            )),
            ..Default::default()
        },
    );
    drop(c);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    let all = v.problems.join("\n");
    assert!(all.contains("retention pruned only through seq 0"), "{all}");
    assert!(matches!(
        s.record(101, change(9)),
        Err(StoreError::Truncated(_))
    ));
}

#[test]
fn r_retention_moves_the_pruned_point_and_expected_heads_below_it_need_a_checkpoint() {
    let d = tempdir("pruned-point");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let mut heads = Vec::new();
    for n in 0..6 {
        let e = s.record(1000 * (n as i64 + 1), change(n)).unwrap();
        heads.push((e.seq, e.hash));
    }
    assert_eq!(s.prune_ledger(3500, 7000, "portwarden").unwrap(), 3);
    drop(s);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(v.ok(), "{v:?}");
    // Record 3 is named by the checkpoint: confirmed. Record 2 is gone: not confirmable.
    let v = s
        .verify_ledger_expecting(Some((heads[2].0, &heads[2].1)))
        .unwrap();
    assert!(v.ok(), "{v:?}");
    let v = s
        .verify_ledger_expecting(Some((heads[1].0, &heads[1].1)))
        .unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("cannot confirm")),
        "{v:?}"
    );
}

#[test]
fn r_missing_anchor_refuses_writes_until_repair_adopts_it() {
    let d = tempdir("anchor-gone");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for n in 0..4 {
        s.record(100, change(n)).unwrap();
    }
    drop(s);
    // The tail and the anchor deleted together.
    let c = raw(&d);
    c.execute_batch("DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE seq > 2;")
        .unwrap();
    drop(c);
    std::fs::remove_file(d.join(portwarden_store::anchor::ANCHOR_FILE)).unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("anchor") && p.contains("missing")),
        "{v:?}"
    );
    let e = s.record(101, change(9)).unwrap_err();
    assert!(e.to_string().contains("--repair"), "{e}");
    drop(s);
    // Still refused on the next open: the anchor is not silently re-created.
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(s.record(101, change(9)).is_err());
    let done = s.repair_ledger(102, "op").unwrap();
    assert!(done.iter().any(|d| d.contains("adopted")), "{done:?}");
    s.record(103, change(10)).unwrap();
    drop(s);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(v.ok(), "{v:?}");
    assert!(
        s.ledger(None)
            .unwrap()
            .iter()
            .any(|e| e.action == "ledger.repair")
    );
}

#[test]
fn r_a_trigger_with_other_sql_is_found_and_repaired() {
    let d = tempdir("trigger-sql");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.record(100, change(0)).unwrap();
    drop(s);
    let c = raw(&d);
    c.execute_batch(
        "DROP TRIGGER ledger_no_delete; \
         CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger WHEN 0 BEGIN SELECT 1; END;",
    )
    .unwrap();
    drop(c);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("ledger_no_delete") && p.contains("SQL")),
        "{v:?}"
    );
    let done = s.repair_ledger(101, "op").unwrap();
    assert!(
        done.iter().any(|d| d.contains("SQL had been changed")),
        "{done:?}"
    );
    assert!(s.verify_ledger().unwrap().ok());
    drop(s);
    assert!(raw(&d).execute("DELETE FROM ledger", []).is_err());
}

static WARNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn r_an_anchor_that_cannot_move_after_a_commit_is_a_warning() {
    let d = tempdir("anchor-full");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.on_warning(|_| {
        WARNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    // The anchor's temporary file cannot be created (as on a full disk).
    let tmp = d.join(format!(
        ".{}.tmp-{}",
        portwarden_store::anchor::ANCHOR_FILE,
        std::process::id()
    ));
    std::fs::create_dir(&tmp).unwrap();
    s.anchor_every_write();
    let port = alloc(&mut s, 10, "alice", 100).expect("the committed lease is reported");
    assert!(WARNED.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(s.leases().unwrap().len(), 1);
    assert_eq!(s.leases().unwrap()[0].port.get(), port);
    std::fs::remove_dir(&tmp).unwrap();
}

#[test]
fn r_a_forged_transaction_is_not_vouched_for() {
    let (d, s, t) = with_apply("forged-txn", None);
    drop(s);
    // A new pending transaction whose first, well-chained apply record vouches for an
    // accept-all snapshot with the right digest and a made-up MAC.
    let evil = "table inet portwarden { chain input { type filter hook input priority 0; policy accept; } }";
    let digest = { format!("sha256:{}", sha256_hex(evil)) };
    let c = raw(&d);
    c.execute(
        "INSERT INTO fw_txn (created, deadline, state, snapshot, ruleset, actor) \
         VALUES (1, 2, 'pending', ?1, 'x', 'op')",
        [evil],
    )
    .unwrap();
    let id = c.last_insert_rowid();
    for before in [digest.clone(), format!("{digest} mac:{}", "0".repeat(64))] {
        forge(
            &c,
            portwarden_store::Change {
                actor: "op".into(),
                action: "fw.apply".into(),
                subject: format!("fw txn {id}"),
                before: Some(before),
                ..Default::default()
            },
        );
    }
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let forged = s
        .fw_txns()
        .unwrap()
        .into_iter()
        .find(|x| x.id == id)
        .unwrap();
    let e = s.fw_verified_snapshot(&forged).unwrap_err();
    assert!(matches!(e, StoreError::SnapshotUnvouched { .. }), "{e}");
    // Ours still verifies.
    assert!(s.fw_verified_snapshot(&t).is_ok());
}

#[test]
fn r_a_downgraded_schema_does_not_adopt_a_missing_anchor() {
    let d = tempdir("downgrade");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for n in 0..4 {
        s.record(100, change(n)).unwrap();
    }
    drop(s);
    let c = raw(&d);
    c.execute_batch(
        "DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE seq > 2; \
         ALTER TABLE leases DROP COLUMN ttl_max; PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(c);
    std::fs::remove_file(d.join(portwarden_store::anchor::ANCHOR_FILE)).unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(
        matches!(s.record(101, change(9)), Err(StoreError::Truncated(_))),
        "the migration adopted the truncated head as the anchor"
    );
    assert!(
        !s.ledger(None)
            .unwrap()
            .iter()
            .any(|e| e.action == "ledger.anchor-adopted")
    );
}

#[test]
fn r_one_old_timestamp_does_not_make_retention_erase_history() {
    let d = tempdir("old-ts");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for n in 0..5 {
        s.record(10_000 + n as i64, change(n)).unwrap();
    }
    drop(s);
    // One chained record with an ancient timestamp at the end.
    let c = raw(&d);
    forge_at(&c, 1, change(99));
    drop(c);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    // Everything before 10_002 is old; the record stamped 1 at the end is not a reason to
    // take the rest.
    assert_eq!(s.prune_ledger(10_002, 20_000, "op").unwrap(), 2);
    let l = s.ledger(None).unwrap();
    assert_eq!(l.first().unwrap().seq, 3);
    assert!(s.verify_ledger().unwrap().ok());
}

#[test]
fn r_an_appended_checkpoint_does_not_hide_the_one_that_explains_the_start() {
    let d = tempdir("two-checkpoints");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    for n in 0..5 {
        s.record(1000 * (n as i64 + 1), change(n)).unwrap();
    }
    s.prune_ledger(2500, 9000, "op").unwrap();
    drop(s);
    let c = raw(&d);
    forge(
        &c,
        portwarden_store::Change {
            actor: "x".into(),
            action: portwarden_store::ledger::CHECKPOINT.into(),
            subject: "ledger".into(),
            after: Some(r#"{"through_seq":1,"through_hash":"00","deleted":1}"#.into()),
            ..Default::default()
        },
    );
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert_eq!(v.broken, None, "{v:?}");
}

#[test]
fn r_triggers_portwarden_did_not_create_are_found_and_dropped() {
    let d = tempdir("foreign-trigger");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.record(100, change(0)).unwrap();
    drop(s);
    raw(&d)
        .execute_batch(
            "CREATE TRIGGER zz BEFORE INSERT ON ledger WHEN NEW.action = 'test.record' \
             BEGIN SELECT RAISE(IGNORE); END;",
        )
        .unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    let v = s.verify_ledger().unwrap();
    assert!(v.problems.iter().any(|p| p.contains("`zz`")), "{v:?}");
    let done = s.repair_ledger(101, "op").unwrap();
    assert!(
        done.iter().any(|d| d.contains("dropped trigger zz")),
        "{done:?}"
    );
    let before = s.ledger(None).unwrap().len();
    s.record(102, change(1)).unwrap();
    assert_eq!(s.ledger(None).unwrap().len(), before + 1);
    assert!(s.verify_ledger().unwrap().ok());
}

#[test]
fn r_an_old_transaction_set_back_to_pending_is_not_rolled_back_to() {
    let d = tempdir("replay");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let t1 = s.fw_begin(100, "op", None, None, "a").unwrap();
    let t2 = s
        .fw_begin(
            200,
            "op",
            Some(300),
            Some("table inet portwarden {\n}\n".into()),
            "b",
        )
        .unwrap();
    assert!(s.fw_verified_snapshot(&t2).is_ok());
    assert!(
        s.fw_finish(t2.id, portwarden_store::FwState::Confirmed, 250, "op", "ok")
            .unwrap()
    );
    drop(s);
    // Both set back to pending with a deadline, as a writer of the file could.
    raw(&d)
        .execute_batch("UPDATE fw_txn SET state = 'pending', deadline = 1;")
        .unwrap();
    let s = SqliteStore::open(&d, "local", false).unwrap();
    for t in [&t1, &t2] {
        let e = s.fw_verified_snapshot(t).unwrap_err();
        assert!(matches!(e, StoreError::SnapshotUnvouched { .. }), "{e}");
    }
    let v = s.verify_ledger().unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("not vouched")),
        "{v:?}"
    );
}

#[test]
fn r_forged_later_records_do_not_switch_off_a_pending_rollback() {
    let (d, s, t) = with_apply("forged-confirm", Some(300));
    drop(s);
    let c = raw(&d);
    for (action, subject) in [("fw.confirm", "fw txn 1"), ("fw.apply", "fw txn 7")] {
        forge(
            &c,
            portwarden_store::Change {
                actor: "x".into(),
                action: action.into(),
                subject: subject.into(),
                before: Some(format!("none mac:{}", "0".repeat(64))),
                after: Some(format!("mac:{}", "0".repeat(64))),
                ..Default::default()
            },
        );
    }
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(s.fw_verified_snapshot(&t).is_ok());
}

#[test]
fn r_grant_and_lease_rows_written_behind_our_back_open_nothing() {
    let d = tempdir("forged-rows");
    grant_and_lease(&d);
    let c = raw(&d);
    c.execute_batch(
        "INSERT INTO grants (addr, protocol, port, expires_at, actor, created_at) \
         VALUES ('203.0.113.7', 'tcp', 5555, 99999, 'x', 1); \
         INSERT INTO grants (addr, protocol, port, expires_at, actor, created_at) \
         VALUES ('garbage', 'tcp', 1, 99999, 'x', 1); \
         INSERT INTO leases (scope, protocol, port, service, owner, state, created_at, expires_at) \
         VALUES ('local', 'tcp', 5556, 'svc', 'x', 'planned', 1, 99999);",
    )
    .unwrap();
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let g = s.grants(200).unwrap();
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].port.get(), 9000);
    let leases = s.leases().unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(
        s.admitted_leases(200)
            .unwrap()
            .iter()
            .map(|l| l.port.get())
            .collect::<Vec<_>>(),
        [20000]
    );
    let v = s.verify_ledger().unwrap();
    let all = v.problems.join("\n");
    assert!(all.contains("5555/tcp from 203.0.113.7"), "{all}");
    assert!(all.contains("does not read"), "{all}");
    assert!(all.contains("5556/tcp"), "{all}");
}

#[test]
fn r_a_lost_key_refuses_writes_until_repair_makes_a_new_one() {
    let d = tempdir("key-lost");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    alloc(&mut s, 10, "alice", 100).unwrap();
    drop(s);
    std::fs::remove_file(d.join(portwarden_store::key::KEY_FILE)).unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(
        !d.join(portwarden_store::key::KEY_FILE).exists(),
        "re-made silently"
    );
    let e = alloc(&mut s, 10, "bob", 101).unwrap_err();
    assert!(e.to_string().contains("host key"), "{e}");
    assert!(!s.verify_ledger().unwrap().ok());
    let done = s.repair_ledger(102, "op").unwrap();
    assert!(done.iter().any(|x| x.contains("new host key")), "{done:?}");
    alloc(&mut s, 10, "bob", 103).unwrap();
    assert_eq!(
        s.admitted_leases(104).unwrap().len(),
        s.leases().unwrap().len()
    );
    assert!(s.verify_ledger().unwrap().ok());
}

#[test]
fn r_a_ledger_table_that_ignores_inserts_fails_the_write() {
    let d = tempdir("ledger-ignore");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.record(100, change(0)).unwrap();
    drop(s);
    raw(&d)
        .execute_batch(
            "DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete; \
             ALTER TABLE ledger RENAME TO old_ledger; \
             CREATE TABLE ledger (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, actor TEXT NOT NULL, \
               action TEXT NOT NULL UNIQUE ON CONFLICT IGNORE, subject TEXT NOT NULL, before TEXT, after TEXT, \
               reason TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL); \
             INSERT INTO ledger SELECT * FROM old_ledger; DROP TABLE old_ledger;",
        )
        .unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    s.repair_ledger(101, "op").unwrap_or_default();
    let before = s.ledger(None).unwrap().len();
    let e = s.record(102, change(1));
    assert!(e.is_err(), "a record was dropped quietly");
    assert_eq!(s.ledger(None).unwrap().len(), before);
}

#[test]
fn r_a_later_apply_counts_whatever_its_row_says_now() {
    let d = tempdir("later-apply");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let t1 = s.fw_begin(100, "op", None, None, "a").unwrap();
    let t2 = s.fw_begin(200, "op", Some(300), None, "b").unwrap();
    assert!(
        s.fw_finish(t2.id, portwarden_store::FwState::Confirmed, 250, "op", "ok")
            .unwrap()
    );
    drop(s);
    raw(&d)
        .execute_batch(
            "UPDATE fw_txn SET state = 'pending' WHERE id = 1; \
             UPDATE fw_txn SET deadline = deadline + 1 WHERE id = 2;",
        )
        .unwrap();
    let s = SqliteStore::open(&d, "local", false).unwrap();
    let e = s.fw_verified_snapshot(&t1).unwrap_err();
    assert!(e.to_string().contains("later apply"), "{e}");
}

#[test]
fn r_rows_put_back_after_they_ended_open_nothing() {
    let d = tempdir("put-back");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let g = portwarden_store::GrantRecord {
        addr: "10.1.2.3".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: Port::new(5432).unwrap(),
        expires_at: 10_000,
        actor: "op".into(),
    };
    s.grant(100, std::slice::from_ref(&g)).unwrap();
    alloc(&mut s, 10, "alice", 100).unwrap();
    let lease = s.leases().unwrap().remove(0);
    drop(s);
    // Copies of the rows, as a backup would hold them.
    let c = raw(&d);
    let grant_row: Vec<rusqlite::types::Value> = c
        .query_row("SELECT * FROM grants", [], |r| {
            (0..7).map(|i| r.get(i)).collect()
        })
        .unwrap();
    let cols: i64 = c
        .query_row(
            "SELECT count(*) FROM pragma_table_info('leases')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let lease_row: Vec<rusqlite::types::Value> = c
        .query_row("SELECT * FROM leases", [], |r| {
            (0..cols as usize).map(|i| r.get(i)).collect()
        })
        .unwrap();
    drop(c);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    s.revoke(200, "op", &[(g.addr, g.protocol, g.port)])
        .unwrap();
    s.release(lease.id, "alice", 200, "op").unwrap();
    drop(s);
    let c = raw(&d);
    let marks = |n: usize| vec!["?"; n].join(", ");
    c.execute(
        &format!("INSERT INTO grants VALUES ({})", marks(7)),
        rusqlite::params_from_iter(grant_row),
    )
    .unwrap();
    c.execute(
        &format!("INSERT INTO leases VALUES ({})", marks(cols as usize)),
        rusqlite::params_from_iter(lease_row),
    )
    .unwrap();
    drop(c);
    let s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(
        s.grants(300).unwrap().is_empty(),
        "a revoked grant came back"
    );
    assert!(
        s.admitted_leases(300).unwrap().is_empty(),
        "a released lease came back"
    );
    assert!(!s.verify_ledger().unwrap().ok());
}

#[test]
fn a_version_4_store_upgrades_with_its_grants_and_leases_still_in_force() {
    let d = tempdir("v4-upgrade");
    grant_and_lease(&d);
    // As the previous release left it: no v5 columns, no key, an anchor without the
    // retention point.
    raw(&d)
        .execute_batch(
            "ALTER TABLE leases DROP COLUMN ttl_max; ALTER TABLE leases DROP COLUMN mac; \
             ALTER TABLE grants DROP COLUMN mac; PRAGMA user_version = 4;",
        )
        .unwrap();
    std::fs::remove_file(d.join(portwarden_store::key::KEY_FILE)).unwrap();
    let anchor = d.join(portwarden_store::anchor::ANCHOR_FILE);
    let text = std::fs::read_to_string(&anchor).unwrap();
    let v4: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&anchor, v4).unwrap();
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    assert_eq!(s.grants(200).unwrap().len(), 1, "the grant lost its force");
    assert_eq!(
        s.admitted_leases(200).unwrap().len(),
        1,
        "the lease lost its force"
    );
    let v = s.verify_ledger().unwrap();
    assert!(v.ok(), "{v:?}");
    let actions: Vec<String> = s
        .ledger(None)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.iter().any(|a| a == "ledger.key-adopted"),
        "{actions:?}"
    );
    assert!(
        std::fs::read_to_string(&anchor)
            .unwrap()
            .contains("pruned 0")
    );
    // And it keeps working.
    alloc(&mut s, 10, "bob", 300).unwrap();
    assert!(s.verify_ledger().unwrap().ok());
}

fn token(
    name: &str,
    role: portwarden_core::auth::Role,
    secret: &str,
) -> portwarden_store::TokenRecord {
    portwarden_store::TokenRecord {
        name: name.into(),
        role,
        sha256: sha256_hex(secret),
        created_at: 100,
        actor: "root".into(),
    }
}

#[test]
fn tokens_are_kept_by_digest_recorded_and_a_hand_written_row_opens_nothing() {
    use portwarden_core::auth::Role;
    let d = tempdir("tokens");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    s.token_create(100, &token("ci", Role::Operate, "secret-1"))
        .unwrap();
    let before = s.ledger(None).unwrap().len();
    // A second token of the same name is refused and writes nothing.
    assert!(matches!(
        s.token_create(101, &token("ci", Role::Admin, "secret-2")),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(s.ledger(None).unwrap().len(), before);
    let found = s.token_by_hash(&sha256_hex("secret-1")).unwrap().unwrap();
    assert_eq!((found.name.as_str(), found.role), ("ci", Role::Operate));
    assert!(s.token_by_hash(&sha256_hex("secret-2")).unwrap().is_none());
    // The secret itself is nowhere in the database.
    let db = std::fs::read(d.join(portwarden_store::DB_FILE)).unwrap();
    assert!(!db.windows(8).any(|w| w == b"secret-1"));
    // A row written behind the store's back (or with its role raised) opens nothing.
    let c = raw(&d);
    c.execute(
        "INSERT INTO tokens (name, role, sha256, created_at, actor, mac) VALUES ('evil', 'admin', ?1, 1, 'x', '1:00')",
        [sha256_hex("forged")],
    )
    .unwrap();
    c.execute("UPDATE tokens SET role = 'admin' WHERE name = 'ci'", [])
        .unwrap();
    drop(c);
    let s2 = SqliteStore::open(&d, "local", false).unwrap();
    assert!(s2.token_by_hash(&sha256_hex("forged")).unwrap().is_none());
    assert!(s2.token_by_hash(&sha256_hex("secret-1")).unwrap().is_none());
    drop(s2);
    let mut s = SqliteStore::open(&d, "local", false).unwrap();
    assert!(s.token_revoke(200, "root", "ci").unwrap());
    assert!(!s.token_revoke(201, "root", "ci").unwrap());
    let actions: Vec<String> = s
        .ledger(None)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"token.create".to_string()));
    assert_eq!(actions.last().unwrap(), "token.revoke");
    assert_eq!(
        s.tokens().unwrap().len(),
        1,
        "only the hand-written row is left"
    );
}

fn adopt<'a>(
    actor: &'a str,
    how: &'a str,
    text: &'a str,
    reason: Option<&'a str>,
) -> portwarden_store::NewAdoption<'a> {
    portwarden_store::NewAdoption {
        actor,
        how,
        source: "/etc/p.toml",
        text,
        reason,
        txn: None,
    }
}

#[test]
fn policy_versions_are_kept_by_hash_and_each_adoption_is_recorded() {
    let d = tempdir("policy-versions");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let (a, b) = ("version = 1\n", "version = 1\n[host]\nname = \"m\"\n");
    let first = s
        .policy_adopt(100, adopt("alice", "fw apply", a, Some("first")))
        .unwrap()
        .expect("a first adoption");
    assert_eq!(first.previous, None);
    assert_eq!(first.hash, sha256_hex(a));
    // The version in force again is not a change: nothing recorded.
    let before = s.ledger(None).unwrap().len();
    assert!(
        s.policy_adopt(101, adopt("bob", "serve", a, None))
            .unwrap()
            .is_none()
    );
    assert_eq!(s.ledger(None).unwrap().len(), before);
    let second = s
        .policy_adopt(102, adopt("bob", "fw apply", b, None))
        .unwrap()
        .unwrap();
    // Back to the first: its text is kept once, its adoption recorded again.
    let third = s
        .policy_adopt(103, adopt("carol", "change rollback", a, Some("undo")))
        .unwrap()
        .unwrap();
    assert_eq!(second.previous.as_deref(), Some(first.hash.as_str()));
    assert_eq!(third.previous.as_deref(), Some(second.hash.as_str()));
    let h = s.policy_history().unwrap();
    assert_eq!(
        h.iter()
            .map(|x| (x.actor.as_str(), x.how.as_str()))
            .collect::<Vec<_>>(),
        [
            ("alice", "fw apply"),
            ("bob", "fw apply"),
            ("carol", "change rollback")
        ]
    );
    let recs: Vec<_> = s
        .ledger(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "policy.adopt")
        .collect();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2].before.as_deref(), Some(second.hash.as_str()));
    assert_eq!(recs[2].after.as_deref(), Some(first.hash.as_str()));
    assert_eq!(recs[2].seq, third.seq);
    // By a prefix of its hash; the text back as it was.
    let v = s.policy_version(&first.hash[..8]).unwrap();
    assert_eq!((v.text.as_str(), v.author.as_str()), (a, "alice"));
    assert_eq!(s.policy_version(&first.hash).unwrap().hash, first.hash);
    for bad in ["abc", "zzzzzzzz", "", "0000000000"] {
        assert!(
            matches!(s.policy_version(bad), Err(StoreError::NoVersion(_))),
            "{bad:?}"
        );
    }
    // A text edited in the database no longer matches its hash: refused.
    raw(&d)
        .execute(
            "UPDATE policy_versions SET text = 'version = 1\n[host]\nname = \"evil\"\n' WHERE hash = ?1",
            [&second.hash],
        )
        .unwrap();
    let e = s.policy_version(&second.hash).unwrap_err();
    assert!(e.to_string().contains("altered in the store"), "{e}");
    assert_eq!(s.verify_ledger().unwrap().broken, None);
}

#[test]
fn a_rolled_back_apply_is_not_the_version_in_force() {
    let d = tempdir("policy-rollback");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let (a, b) = ("version = 1\n", "version = 1\n# b\n");
    let first = s
        .policy_adopt(100, adopt("alice", "fw apply", a, None))
        .unwrap()
        .unwrap();
    let t = s
        .fw_begin(101, "bob", Some(200), None, "table inet portwarden {}")
        .unwrap();
    let second = s
        .policy_adopt(
            101,
            portwarden_store::NewAdoption {
                txn: Some(t.id),
                ..adopt("bob", "fw apply", b, None)
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(second.txn_state.as_deref(), Some("pending"));
    assert_eq!(s.policy_current().unwrap().unwrap().hash, second.hash);
    s.fw_finish(
        t.id,
        portwarden_store::FwState::RolledBack,
        201,
        "watcher",
        "deadline",
    )
    .unwrap();
    assert_eq!(s.policy_current().unwrap().unwrap().hash, first.hash);
    let h = s.policy_history().unwrap();
    assert_eq!(h[1].txn_state.as_deref(), Some("rolled-back"));
    // Adopting the first again after the rollback is nothing new.
    assert!(
        s.policy_adopt(202, adopt("carol", "serve", a, None))
            .unwrap()
            .is_none()
    );
}

#[test]
fn change_requests_step_through_core_and_every_step_and_refusal_is_recorded() {
    use portwarden_core::change::{ChangeError, ChangeEvent as E, ChangeState as S};
    let d = tempdir("changes");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let text = "version = 1\n# proposed\n";
    let c = s
        .change_create(
            100,
            portwarden_store::NewChange {
                requester: "alice",
                reason: "open rsync to the new mirror",
                ticket: Some("OPS-7"),
                text,
                source: "/etc/new.toml",
                base: None,
                needed: 1,
                require_approval: true,
                preflight: "{}",
            },
        )
        .unwrap();
    assert_eq!(c.change.state, S::Requested);
    assert_eq!(s.policy_version(&c.version).unwrap().text, text);
    let before = s.ledger(None).unwrap().len();
    // Her own approval is refused, recorded, and changes nothing.
    let e = s
        .change_step(
            101,
            c.id,
            "alice",
            &E::Approve {
                actor: "alice".into(),
            },
            None,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Change {
                cause: ChangeError::OwnChange { .. },
                ..
            }
        ),
        "{e}"
    );
    let l = s.ledger(None).unwrap();
    assert_eq!(l.len(), before + 1);
    assert_eq!(l.last().unwrap().action, "change.refused");
    assert_eq!(
        s.change_get(c.id).unwrap().unwrap().change.state,
        S::Requested
    );
    let ok = |s: &mut SqliteStore, e: E, txn: Option<i64>| {
        s.change_step(102, c.id, "bob", &e, None, txn)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        ok(
            &mut s,
            E::Approve {
                actor: "bob".into()
            },
            None
        )
        .change
        .state,
        S::Approved
    );
    assert_eq!(ok(&mut s, E::Apply, None).change.state, S::Applying);
    let p = ok(
        &mut s,
        E::Loaded {
            confirm_by: Some(200),
        },
        Some(7),
    );
    assert_eq!(
        (p.change.state, p.txn, p.change.confirm_by),
        (S::AppliedPendingConfirm, Some(7), Some(200))
    );
    assert_eq!(ok(&mut s, E::Confirm, None).change.state, S::Applied);
    let actions: Vec<String> = s
        .ledger(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.subject == format!("change:{}", c.id))
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "change.request",
            "change.refused",
            "change.approve",
            "change.apply",
            "change.loaded",
            "change.confirm"
        ]
    );
    assert_eq!(s.changes().unwrap().len(), 1);
    assert!(matches!(
        s.change_step(103, 99, "bob", &E::Apply, None, None),
        Err(StoreError::NoChange(99))
    ));
    assert_eq!(s.verify_ledger().unwrap().broken, None);
}

#[test]
fn change_rows_and_adoptions_edited_in_the_database_are_not_vouched_for() {
    use portwarden_core::change::ChangeEvent as E;
    let d = tempdir("changes-mac");
    let mut s = SqliteStore::open(&d, "local", true).unwrap();
    let first = s
        .policy_adopt(100, adopt("alice", "fw apply", "version = 1\n", None))
        .unwrap()
        .unwrap();
    let second = s
        .policy_adopt(
            101,
            adopt("alice", "fw apply", "version = 1\n# strict\n", None),
        )
        .unwrap()
        .unwrap();
    assert!(first.vouched && second.vouched);
    let new = |s: &mut SqliteStore, text: &str| {
        s.change_create(
            102,
            portwarden_store::NewChange {
                requester: "alice",
                reason: "r",
                ticket: None,
                text,
                source: "f",
                base: Some(&second.hash),
                needed: 1,
                require_approval: true,
                preflight: "{}",
            },
        )
        .unwrap()
    };
    let c = new(&mut s, "version = 1\n# a\n");
    assert!(c.vouched);
    // Refused steps keep the row vouched for (its seal follows the ledger).
    assert!(
        s.change_step(
            103,
            c.id,
            "alice",
            &E::Approve {
                actor: "alice".into()
            },
            None,
            None
        )
        .is_err()
    );
    assert!(s.change_get(c.id).unwrap().unwrap().vouched);
    // A state and approvals written by hand: not vouched, and no step is taken with it.
    raw(&d)
        .execute(
            "UPDATE change_requests SET state = 'approved', approvals = '[\"bob\"]' WHERE id = ?1",
            [c.id],
        )
        .unwrap();
    let forged = s.change_get(c.id).unwrap().unwrap();
    assert!(!forged.vouched);
    assert!(matches!(
        s.change_step(104, c.id, "carol", &E::Apply, None, None),
        Err(StoreError::Altered(_))
    ));
    // A row put back as an earlier step left it (a replay) is not vouched for either.
    let c2 = new(&mut s, "version = 1\n# b\n");
    let before: (String, String) = raw(&d)
        .query_row(
            "SELECT state, mac FROM change_requests WHERE id = ?1",
            [c2.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    s.change_step(
        105,
        c2.id,
        "bob",
        &E::Reject {
            actor: "bob".into(),
        },
        Some("no"),
        None,
    )
    .unwrap();
    raw(&d)
        .execute(
            "UPDATE change_requests SET state = ?2, mac = ?3 WHERE id = ?1",
            rusqlite::params![c2.id, before.0, before.1],
        )
        .unwrap();
    assert!(!s.change_get(c2.id).unwrap().unwrap().vouched);
    // An adoption pointed at another version is passed over: the one before is in force.
    raw(&d)
        .execute(
            "UPDATE policy_adoptions SET hash = ?1 WHERE id = ?2",
            rusqlite::params![first.hash, second.id],
        )
        .unwrap();
    let cur = s.policy_current().unwrap().unwrap();
    assert_eq!(cur.id, first.id, "{cur:?}");
}
