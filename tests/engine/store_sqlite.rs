//! The SQLite store: the store contract (`store_contract.rs`) on a real database file, and what
//! is SQLite's own: WAL mode, the file modes of the database and its companions.

use cstagate::store::{SqliteStore, Store, StoreError};

use super::store_contract::{drive, Backend};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

/// A SQLite file in a fresh temporary directory.
pub struct Sqlite;

impl Backend for Sqlite {
    const SHARED: bool = false;
    type Db = std::path::PathBuf;
    fn fresh(name: &str) -> Option<Self::Db> {
        Some(tmp(name))
    }
    fn open(db: &Self::Db) -> Box<dyn Store> {
        Box::new(SqliteStore::open(db).unwrap())
    }
    fn exec(db: &Self::Db, sql: &str) -> Result<(), String> {
        rusqlite::Connection::open(db).unwrap().execute_batch(sql).map_err(|e| e.to_string())
    }
    fn rows(db: &Self::Db, sql: &str) -> Vec<String> {
        use rusqlite::types::ValueRef;
        let raw = rusqlite::Connection::open(db).unwrap();
        let mut q = raw.prepare(sql).unwrap();
        let n = q.column_count();
        q.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        ValueRef::Null => String::new(),
                        ValueRef::Integer(v) => v.to_string(),
                        ValueRef::Real(v) => v.to_string(),
                        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|c| c.join("|"))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }
    fn duplicate_key(e: &StoreError) -> bool {
        matches!(e, StoreError::Db(rusqlite::Error::SqliteFailure(f, Some(msg))) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY && msg.contains("bindings.pbx, bindings.extension"))
    }
}

crate::contract_tests!(Sqlite, audit_refusals = &["UPDATE audit SET result = 'x'", "UPDATE audit SET step = 'bound' WHERE seq = 1", "DELETE FROM audit", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)"]);

/// The refusal is the trigger's constraint error, and the database is in WAL mode.
#[test]
fn the_append_only_refusal_is_a_trigger_constraint_and_the_journal_is_wal() {
    let path = tmp("trigger");
    drive(&mut SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    match raw.execute("DELETE FROM audit", []) {
        Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
            assert_eq!((e.code, e.extended_code), (rusqlite::ErrorCode::ConstraintViolation, rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER), "{e}");
            assert_eq!(msg, "the audit log is append-only");
        }
        other => panic!("the append-only trigger must refuse it, got {other:?}"),
    }
    let journal: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(journal, "wal");
}

/// The mode bits of a file the store made (or was given).
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

#[cfg(unix)]
#[test]
fn the_database_and_its_wal_are_readable_by_the_gateway_alone() {
    // A new database: the file, its WAL and its shared-memory index, all 0600 while in use.
    let path = tmp("modes");
    let mut s = SqliteStore::open(&path).unwrap();
    drive(&mut s);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(format!("{:o}", mode(&with_suffix(&path, suffix))), "600", "gateway.db{suffix}");
    }
    drop(s);

    // A database an older version left world-readable, in use (WAL and index present): tightened.
    let path = tmp("modes-loose");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let _: String = raw.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
    raw.execute_batch("CREATE TABLE old (x); INSERT INTO old VALUES (1);").unwrap();
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(with_suffix(&path, suffix), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    drive(&mut s);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(format!("{:o}", mode(&with_suffix(&path, suffix))), "600", "gateway.db{suffix}");
    }
    let n: i64 = raw.query_row("SELECT count(*) FROM old", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "tightening the modes keeps the data");
}
