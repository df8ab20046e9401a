//! The SQLite backend: one embedded file in WAL mode with `synchronous=FULL`, so a write the
//! gateway has acted on survives a crash or power loss. The default: nothing to install.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{key_parse, key_text, AssociationFilter, AuditFilter, Store, StoreError, StoredKey, MAX_ASSOCIATIONS_LISTED};
use crate::association::{AssociationView, AuditRecord, Binding, Millis, OwnerBlock, ProofCall, Snapshot, StoreWrite};
use crate::ids::{AccountId, AssociationId, Extension, PbxId, TenantId};

/// The typed ids are their string in the database, as in JSON.
macro_rules! sql_text {
    ($($t:ty),*) => {$(
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                String::column_result(v).map(<$t>::from)
            }
        }
    )*};
}
sql_text!(AccountId, AssociationId, Extension, PbxId, TenantId);

/// SQLite implementation.
pub struct SqliteStore {
    db: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    pbx TEXT NOT NULL, extension TEXT NOT NULL, tenant TEXT NOT NULL, account TEXT NOT NULL,
    did TEXT, did_verified INTEGER NOT NULL, bound_at INTEGER NOT NULL,
    PRIMARY KEY (pbx, extension));
CREATE INDEX IF NOT EXISTS bindings_account ON bindings (tenant, account);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, account TEXT NOT NULL, pbx TEXT NOT NULL,
    extension TEXT NOT NULL, state TEXT NOT NULL, final INTEGER NOT NULL, view TEXT NOT NULL,
    updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS associations_open ON associations (final);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS proof_calls (pbx TEXT NOT NULL, extension TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS proof_calls_at ON proof_calls (at);
CREATE TABLE IF NOT EXISTS owner_blocks (
    tenant TEXT NOT NULL, account TEXT NOT NULL, pbx TEXT NOT NULL, extension TEXT NOT NULL,
    until INTEGER NOT NULL, PRIMARY KEY (tenant, account, pbx, extension));
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, tenant TEXT NOT NULL,
    account TEXT NOT NULL, pbx TEXT NOT NULL, extension TEXT NOT NULL, association TEXT NOT NULL,
    step TEXT NOT NULL, result TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_account ON audit (tenant, account);
CREATE INDEX IF NOT EXISTS audit_extension ON audit (extension);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

impl SqliteStore {
    /// Open (creating if needed) the database file.
    ///
    /// # Errors
    /// The file cannot be opened or the schema applied.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        private_files(path)?;
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        // Proof calls are charged to the requesting account too (added after the first release).
        let has_account: bool = db.query_row("SELECT COUNT(*) FROM pragma_table_info('proof_calls') WHERE name = 'account'", [], |r| r.get::<_, i64>(0))? > 0;
        if !has_account {
            db.execute_batch("ALTER TABLE proof_calls ADD COLUMN tenant TEXT NOT NULL DEFAULT ''; ALTER TABLE proof_calls ADD COLUMN account TEXT NOT NULL DEFAULT '';")?;
        }
        // Statements are prepared once and reused (parsing dominated the commit cost).
        db.set_prepared_statement_cache_capacity(32);
        Ok(SqliteStore { db })
    }
}

/// Make the database and its companions readable and writable by the gateway's user alone: they
/// hold who is bound to which phone, accounts and the audit log.
///
/// The database file is created 0600 here, before SQLite opens it (SQLite would create it 0644
/// under the usual umask). SQLite creates the `-wal` and `-shm` files with the database file's
/// mode whatever the umask (`robust_open` in its Unix VFS), so they are not created here: an
/// empty WAL made in advance would be deleted beside an empty database and would switch an
/// existing rollback-journal database to WAL before its pragmas are read. Files already there
/// with looser modes (an older version, a hand-made copy) are tightened to 0600, and the log says
/// so.
///
/// # Errors
/// The database file cannot be created, or a mode cannot be changed.
#[cfg(unix)]
fn private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    fn io(p: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::File { path: p.display().to_string(), source }
    }
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(io(path))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let p = std::path::PathBuf::from(name);
        let mode = match std::fs::metadata(&p) {
            Ok(m) => m.permissions().mode() & 0o777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&p)(e)),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io(&p))?;
            tracing::warn!(path = %p.display(), was = format!("{mode:o}"), "database file was open to other users: mode set to 600");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_files(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl Store for SqliteStore {
    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.db.transaction()?;
        for w in writes {
            match w {
                StoreWrite::Association(v) => {
                    let json = serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let state = serde_json::to_value(v.state).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
                    tx.prepare_cached("INSERT INTO associations (id, tenant, account, pbx, extension, state, final, view, updated_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)
                         ON CONFLICT(id) DO UPDATE SET state = excluded.state, final = excluded.final, view = excluded.view, updated_at = excluded.updated_at")?.execute(
                        params![v.id, v.tenant, v.account, v.pbx, v.extension, state, v.state.is_final(v.retryable), json, v.history.last().map_or(0, |s| s.at) as i64],
                    )?;
                }
                StoreWrite::Bind(b) => {
                    tx.prepare_cached("INSERT INTO bindings (pbx, extension, tenant, account, did, did_verified, bound_at) VALUES (?1,?2,?3,?4,?5,?6,?7)")?.execute(
                        params![b.pbx, b.extension, b.tenant, b.account, b.did, b.did_verified, b.bound_at as i64],
                    )?;
                }
                StoreWrite::Unbind { pbx, extension } => {
                    tx.prepare_cached("DELETE FROM bindings WHERE pbx = ?1 AND extension = ?2")?.execute( params![pbx, extension])?;
                }
                StoreWrite::Counter { key, value } => {
                    tx.prepare_cached("INSERT INTO counters (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?.execute(
                        params![key_text(key), value],
                    )?;
                }
                StoreWrite::ProofCall(c) => {
                    tx.prepare_cached("INSERT INTO proof_calls (pbx, extension, tenant, account, at) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![c.pbx, c.extension, c.tenant, c.account, c.at as i64])?;
                    // Older than a day is of no use to the hourly limit.
                    tx.prepare_cached("DELETE FROM proof_calls WHERE at < ?1")?.execute(params![c.at.saturating_sub(86_400_000) as i64])?;
                }
                StoreWrite::Block(b) => {
                    tx.prepare_cached("INSERT INTO owner_blocks (tenant, account, pbx, extension, until) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(tenant, account, pbx, extension) DO UPDATE SET until = excluded.until")?.execute(params![b.tenant, b.account, b.pbx, b.extension, b.until as i64])?;
                }
                StoreWrite::Unblock { tenant, account, pbx, extension } => {
                    tx.prepare_cached("DELETE FROM owner_blocks WHERE tenant = ?1 AND account = ?2 AND pbx = ?3 AND extension = ?4")?.execute(params![tenant, account, pbx, extension])?;
                }
                StoreWrite::Audit(a) => {
                    tx.prepare_cached("INSERT INTO audit (at, tenant, account, pbx, extension, association, step, result) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)")?.execute(
                        params![a.at as i64, a.tenant, a.account, a.pbx, a.extension, a.association, a.step, a.result],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn snapshot(&self, now: Millis) -> Result<Snapshot, StoreError> {
        let mut s = Snapshot::default();
        let mut q = self.db.prepare("SELECT pbx, extension, tenant, account, did, did_verified, bound_at FROM bindings")?;
        let rows = q.query_map([], |r| {
            Ok(Binding { pbx: r.get(0)?, extension: r.get(1)?, tenant: r.get(2)?, account: r.get(3)?, did: r.get(4)?, did_verified: r.get(5)?, bound_at: r.get::<_, i64>(6)? as Millis })
        })?;
        for b in rows {
            s.bindings.push(b?);
        }
        let mut q = self.db.prepare("SELECT key, value FROM counters")?;
        for r in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
            let (k, v) = r?;
            match key_parse(&k).ok_or_else(|| StoreError::Corrupt(format!("counter key {k:?}")))? {
                StoredKey::Counter(key) => s.counters.push((key, v)),
                StoredKey::Retired => {}
            }
        }
        let mut q = self.db.prepare("SELECT pbx, extension, tenant, account, at FROM proof_calls WHERE at >= ?1")?;
        for r in q.query_map(params![now.saturating_sub(3_600_000) as i64], |r| Ok(ProofCall { pbx: r.get(0)?, extension: r.get(1)?, tenant: r.get(2)?, account: r.get(3)?, at: r.get::<_, i64>(4)? as Millis }))? {
            s.proof_calls.push(r?);
        }
        let mut q = self.db.prepare("SELECT tenant, account, pbx, extension, until FROM owner_blocks WHERE until > ?1")?;
        for r in q.query_map(params![now as i64], |r| Ok(OwnerBlock { tenant: r.get(0)?, account: r.get(1)?, pbx: r.get(2)?, extension: r.get(3)?, until: r.get::<_, i64>(4)? as Millis }))? {
            s.blocks.push(r?);
        }
        let mut q = self.db.prepare("SELECT view FROM associations WHERE final = 0")?;
        for r in q.query_map([], |r| r.get::<_, String>(0))? {
            let json = r?;
            s.in_flight.push(serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(s)
    }

    fn association(&self, id: &str) -> Result<Option<AssociationView>, StoreError> {
        let json: Option<String> = self.db.query_row("SELECT view FROM associations WHERE id = ?1", params![id], |r| r.get(0)).optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }

    fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut q = self.db.prepare(
            "SELECT at, tenant, account, pbx, extension, association, step, result FROM audit
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR account = ?2) AND (?3 IS NULL OR extension = ?3)
             ORDER BY seq DESC LIMIT ?4",
        )?;
        let rows = q.query_map(params![f.tenant, f.account, f.extension, if f.limit == 0 { 1000 } else { f.limit } as i64], |r| {
            Ok(AuditRecord { at: r.get::<_, i64>(0)? as Millis, tenant: r.get(1)?, account: r.get(2)?, pbx: r.get(3)?, extension: r.get(4)?, association: r.get(5)?, step: r.get(6)?, result: r.get(7)? })
        })?;
        let mut v: Vec<AuditRecord> = rows.collect::<Result<_, _>>()?;
        v.reverse();
        Ok(v)
    }

    fn list_associations(&self, f: &AssociationFilter) -> Result<Vec<AssociationView>, StoreError> {
        let limit = if f.limit == 0 { MAX_ASSOCIATIONS_LISTED } else { f.limit.min(MAX_ASSOCIATIONS_LISTED) };
        // rowid follows creation (an upsert keeps the row): newest first.
        let mut q = self.db.prepare_cached(
            "SELECT view FROM associations
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR extension = ?3) AND (?4 IS NULL OR account = ?4)
             ORDER BY rowid DESC LIMIT ?5",
        )?;
        let rows = q.query_map(params![f.tenant, f.state, f.extension, f.account, limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|j| serde_json::from_str(&j?).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
    }
}
