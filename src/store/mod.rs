//! Durable storage: bindings, associations with their state and history, failure counters,
//! proof calls, owner blocks and the append-only audit log.
//!
//! [`Store`] is the small interface the gateway needs, with two backends: [`SqliteStore`]
//! (`sqlite.rs`), the default, one embedded file, nothing to install; and [`PostgresStore`]
//! (`postgres.rs`), selected by a `postgres://` URL in `[gateway] database`, for several gateways
//! sharing one database. [`Backend::from_settings`] is the one place that decides which. Both
//! give the same guarantees: the engine's writes of one batch are committed in one transaction,
//! durably, before the gateway answers; a batch with a failing write leaves nothing; the audit
//! table refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL) by trigger: it only grows.
//!
//! The trait is synchronous: SQLite's calls are (`fsync` inside), and the PostgreSQL store keeps
//! its async driver on a thread of its own behind a channel (why: `postgres.rs`).

use crate::association::{AssociationView, AuditRecord, Binding, CounterKey, Millis, Snapshot, StoreWrite};
use crate::ids::{AccountId, AssociationId, TenantId};

pub mod fence;
pub mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL server refused a statement (a key, the audit trigger, a login): its
    /// SQLSTATE (`23505`, `23001`, `28P01`…) when it sent one, and its message.
    #[error("PostgreSQL: {message}{}", .sqlstate.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Postgres { sqlstate: Option<String>, message: String },
    /// The PostgreSQL server could not be reached or went away, the pool had no connection in
    /// time, or an operation got no answer in time. Never holds the password.
    #[error("PostgreSQL connection: {0}")]
    Connection(String),
    /// `[cluster]`: a write for a PBX whose lease this instance does not hold with the epoch it
    /// carried (another instance took the PBX over, or never owned here); nothing of the batch
    /// is written.
    #[error("fenced: this instance does not hold the lease of PBX `{pbx}`")]
    Fenced { pbx: String },
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The database file could not be created or its mode tightened.
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Where the gateway keeps its state, as `[gateway] database` (and `database_ca`) say.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file: any `database` that is not a `postgres://` URL.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database: `postgres://user@host:port/db`.
    Postgres(postgres::PgTarget),
}

impl Backend {
    /// The backend `database` names (checked: the configuration calls this at load). The
    /// error names the key at fault and why.
    ///
    /// # Errors
    /// A `postgres://` URL that [`postgres::PgTarget::parse`] refuses; `database_ca` without
    /// such a URL.
    pub fn from_settings(database: &std::path::Path, ca: Option<&std::path::Path>) -> Result<Backend, (&'static str, String)> {
        match database.to_str().filter(|d| postgres::is_url(d)) {
            Some(url) => postgres::PgTarget::parse(url, ca).map(Backend::Postgres),
            None if ca.is_some() => Err(("database_ca", "is only for a postgres:// database".into())),
            None => Ok(Backend::Sqlite(database.to_owned())),
        }
    }

    /// Open it: `password` (from `database_password_env`) for PostgreSQL.
    ///
    /// # Errors
    /// As [`SqliteStore::open`] and [`PostgresStore::open`].
    pub fn open(&self, password: Option<String>) -> Result<Box<dyn Store>, StoreError> {
        Ok(match self {
            Backend::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Backend::Postgres(target) => Box::new(PostgresStore::open(target, password)?),
        })
    }
}

/// Filter for reading the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<TenantId>,
    pub account: Option<String>,
    pub extension: Option<String>,
    pub limit: usize,
}

/// Filter for listing associations (`GET /v1/associations`): every given member must match.
#[derive(Debug, Clone, Default)]
pub struct AssociationFilter {
    /// A tenant sees its own associations only; `None` (the admin) sees all.
    pub tenant: Option<TenantId>,
    /// The state's API name (`bound`, `failed`, ...).
    pub state: Option<String>,
    pub extension: Option<String>,
    pub account: Option<String>,
    /// At most this many, newest first; 0 means [`MAX_ASSOCIATIONS_LISTED`].
    pub limit: usize,
}

/// The most associations one list answer holds (and its default).
pub const MAX_ASSOCIATIONS_LISTED: usize = 1000;

/// What the gateway needs from storage.
pub trait Store: Send {
    /// Commit the writes of one engine step atomically.
    ///
    /// # Errors
    /// The database refused; nothing of the batch is written.
    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), StoreError>;
    /// Everything needed to rebuild the engine after a restart.
    ///
    /// # Errors
    /// Unreadable or corrupt records.
    fn snapshot(&self, now: Millis) -> Result<Snapshot, StoreError>;
    /// One association, for the API (also those finished before a restart).
    ///
    /// # Errors
    /// Unreadable or corrupt record.
    fn association(&self, id: &str) -> Result<Option<AssociationView>, StoreError>;
    /// Audit records, newest last.
    ///
    /// # Errors
    /// Unreadable records.
    fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    /// Associations matching `f` (finished ones included), newest first, at most `f.limit`
    /// (capped at [`MAX_ASSOCIATIONS_LISTED`]).
    ///
    /// # Errors
    /// Unreadable or corrupt records.
    fn list_associations(&self, f: &AssociationFilter) -> Result<Vec<AssociationView>, StoreError>;

    // The account-wide rules where several gateways share the store ([`PostgresStore`]). On
    // one process (SQLite) the engine's memory is the whole truth, and these are no-ops.

    /// Reserve `account`'s one live association for `association` (about to be created, on
    /// `pbx` when the request names it), before the engine decides: `false` when another live
    /// association holds it (the create is refused `account_busy`). The reservation ends in
    /// the transaction that makes the association final, or by [`Store::release_account`].
    ///
    /// # Errors
    /// The store cannot be reached.
    fn claim_account(&mut self, _claim: &AccountClaim) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Give `claim` back: its create was refused, or not committed.
    ///
    /// # Errors
    /// The store cannot be reached (the claim frees itself a minute after it was taken, its
    /// association never stored).
    fn release_account(&mut self, _claim: &AccountClaim) -> Result<(), StoreError> {
        Ok(())
    }
    /// The stored failure counters of these accounts (their [`CounterKey::Account`]s; none
    /// stored, none returned), which other gateways add to: the engine takes them before it
    /// judges a create or a code. Empty where the engine's memory is the whole truth.
    ///
    /// # Errors
    /// Unreadable records.
    fn account_counters(&self, _accounts: &[(TenantId, AccountId)]) -> Result<Vec<(CounterKey, u32)>, StoreError> {
        Ok(vec![])
    }
    /// The account's bindings on every PBX, read from the store when other gateways write them
    /// (`Some`); `None`: the engine's memory holds them all.
    ///
    /// # Errors
    /// Unreadable records.
    fn bindings_of(&self, _tenant: &str, _account: &str) -> Result<Option<Vec<Binding>>, StoreError> {
        Ok(None)
    }
}

/// An account's reservation of its one live association ([`Store::claim_account`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountClaim {
    pub tenant: TenantId,
    pub account: AccountId,
    pub association: AssociationId,
    /// The PBX the create names, if it does (for the operator's eyes only).
    pub pbx: Option<String>,
}

pub(crate) fn key_text(k: &CounterKey) -> String {
    match k {
        CounterKey::Account { tenant, account } => format!("acc\u{1f}{tenant}\u{1f}{account}"),
        CounterKey::AccountExtension { tenant, account, pbx, extension } => format!("acx\u{1f}{tenant}\u{1f}{account}\u{1f}{pbx}\u{1f}{extension}"),
    }
}

/// What a stored counter key is: a counter, one of the per-extension counters of earlier
/// releases (which charged failures to the extension, so anyone could lock its owner out: no
/// longer counted), or corrupt.
pub(crate) enum StoredKey {
    Counter(CounterKey),
    Retired,
}

pub(crate) fn key_parse(s: &str) -> Option<StoredKey> {
    let p: Vec<&str> = s.split('\u{1f}').collect();
    match p.as_slice() {
        ["acc", tenant, account] => Some(StoredKey::Counter(CounterKey::Account { tenant: (*tenant).into(), account: (*account).into() })),
        ["acx", tenant, account, pbx, extension] => Some(StoredKey::Counter(CounterKey::AccountExtension { tenant: (*tenant).into(), account: (*account).into(), pbx: (*pbx).into(), extension: (*extension).into() })),
        ["ext", _, _] => Some(StoredKey::Retired),
        _ => None,
    }
}

