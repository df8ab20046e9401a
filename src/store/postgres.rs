//! The PostgreSQL backend: the gateway's state in a PostgreSQL database (`[gateway] database =
//! "postgres://user@host:port/db"`), the foundation for several gateways sharing one database.
//!
//! **Shape.** [`Store`] stays synchronous, as the actor calls it, and this store keeps its async
//! driver (`tokio-postgres`, `deadpool-postgres`) on a thread of its own with a current-thread
//! runtime: each call sends a request over a channel and waits for the answer, bounded. The
//! gateway's actor therefore waits on a commit exactly as it waits on SQLite's `fsync`: its
//! logic (group commit, rebuild from [`Store::snapshot`] after a failed commit) is unchanged, no
//! `block_on` runs inside the gateway's runtime, and the connections' tasks keep running on the
//! store's own runtime between calls (they see a server that went away before the next commit
//! does). The other shape, async trait methods, would have made every SQLite call an `fsync`
//! inside a future and changed the actor and every `Store` in the tests for no gain here.
//!
//! **Durable before anyone is told.** Every connection starts with `synchronous_commit=on` (a
//! startup option, which wins over a database's or role's setting), and each `apply` is one
//! transaction: `BEGIN`, the batch's statements and `COMMIT` go out together (pipelined: one
//! round trip and the WAL flush), and any failure rolls back the whole batch. A commit whose
//! answer does not come within [`OP_TIMEOUT`] is reported failed, its connection dropped: it
//! may have landed, and the actor's rebuild from the snapshot reads back whichever it was.
//!
//! **Schema.** Versioned migrations, embedded SQL files under `migrations/postgres/`, applied at
//! start in order, each in its own transaction under `pg_advisory_xact_lock`, so that two gateways
//! starting at once apply each version once; a database whose schema is newer than this gateway
//! knows is refused. Hand-rolled (about thirty lines) rather than `refinery`: one more dependency
//! tree for a loop over files, and the advisory lock (which `refinery` does not take) is the point.
//! The audit table refuses UPDATE, DELETE and TRUNCATE by trigger, whoever sends them.
//!
//! **Account-wide rules** (several gateways, one database): an account's one live association
//! is a claim row taken atomically before the engine decides a create ([`Store::claim_account`],
//! released by a trigger with the association's final state), so that no write batch is ever
//! refused for it and group commit stays as it is; a failure counter is written as an atomic
//! increment (or a reset), and read back before each judgement ([`Store::account_counters`]).
//! Crashes: a claim whose association was never stored frees the account after
//! [`CLAIM_ORPHANED_AFTER`]; one whose association was stored in flight is freed when the PBX's
//! next owner, or the restarted gateway, ends it `gateway_restarted`.
//!
//! **TLS.** `sslmode` in the URL: `verify-full` (the default unless every host is loopback or a
//! Unix socket: certificate chain to the public roots or `database_ca`, and the host name),
//! `require` (encrypted, certificate not checked: an explicit choice) or `disable` (the default
//! on loopback; elsewhere an explicit choice, logged as a warning). `prefer` and `allow`, which
//! fall back to clear text silently, are refused.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::CertificateDer;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{key_parse, key_text, AccountClaim, AssociationFilter, AuditFilter, Store, StoreError, StoredKey, MAX_ASSOCIATIONS_LISTED};
use crate::association::{AssociationView, AuditRecord, Binding, CounterKey, Millis, OwnerBlock, ProofCall, Snapshot, StoreWrite};
use crate::ids::{AccountId, TenantId};

/// The schema's migrations, in order: version and SQL. A released file is never edited; a
/// change is a new file.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/postgres/0001_initial.sql")),
    (2, include_str!("migrations/postgres/0002_associations_seq.sql")),
    (3, include_str!("migrations/postgres/0003_cluster_leases.sql")),
    (4, include_str!("migrations/postgres/0004_account_rules.sql")),
];

/// The advisory lock that serialises migrations across gateways ("cstagate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6373_7461_6761_7465;

/// The longest one store operation (a commit, a snapshot, a read) may take on the store's side,
/// connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to the server (TCP, TLS, authentication) at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Opening the store (connecting, migrating: the lock may be held by another gateway migrating).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections kept by the pool: the actor uses one at a time; a spare replaces a broken one
/// without waiting.
const POOL_SIZE: usize = 2;

/// Whether `database` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// How the connection is protected (the URL's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyFull,
}

/// A PostgreSQL database the configuration names, checked at load: the URL without a password
/// (it comes from `database_password_env` only), its `sslmode` and the CA certificates of
/// `database_ca`.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    ssl: SslMode,
    /// Whether every host is loopback or a Unix socket (this machine).
    local: bool,
    ca: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").field("hosts", &self.config.get_hosts()).field("dbname", &self.config.get_dbname()).field("ssl", &self.ssl).finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Check `url` (`postgres://user@host[:port]/db[?sslmode=…]`) and read `ca`. The error
    /// names the key at fault (`database` or `database_ca`) and never repeats a password.
    ///
    /// # Errors
    /// Not a URL tokio-postgres understands, a password in it, no user, an unknown or silently
    /// downgrading `sslmode`, or an unreadable CA file.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<PgTarget, (&'static str, String)> {
        let bad = |why: String| ("database", why);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        // `scheme://user:password@host`: refused before anything could echo it.
        let authority = base.split_once("://").map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        if authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':')) {
            return Err(bad("holds a password: remove it from the URL and name the environment variable that holds it in database_password_env".into()));
        }
        let mut ssl = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "password" => return Err(bad("holds a password: remove it from the URL and name the environment variable that holds it in database_password_env".into())),
                "sslmode" => {
                    ssl = Some(match v {
                        "disable" => SslMode::Disable,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(bad(format!("has sslmode={other}: use verify-full (the default off loopback), require or disable"))),
                    })
                }
                _ => rest.push(pair),
            }
        }
        let plain = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
        let mut config: tokio_postgres::Config = plain.parse().map_err(|e| bad(format!("is not a PostgreSQL URL (postgres://user@host:port/database): {e}")))?;
        if config.get_password().is_some() {
            return Err(bad("holds a password: name the environment variable that holds it in database_password_env instead".into()));
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(bad("names no user (postgres://user@host:port/database)".into()));
        }
        if config.get_hosts().is_empty() {
            return Err(bad("names no host (postgres://user@host:port/database)".into()));
        }
        let local = config.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => true,
        });
        let ssl = ssl.unwrap_or(if local { SslMode::Disable } else { SslMode::VerifyFull });
        let ca = match ca {
            Some(path) if ssl == SslMode::Disable => return Err(("database_ca", format!("{} is set but the database's sslmode is disable: nothing would check it", path.display()))),
            Some(path) => crate::tls::read_ca_file(path).map_err(|e| ("database_ca", e))?,
            None => Vec::new(),
        };
        config.ssl_mode(if ssl == SslMode::Disable { tokio_postgres::config::SslMode::Disable } else { tokio_postgres::config::SslMode::Require });
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives(true);
        // Durable before anyone is told, whatever the database's or the role's default.
        config.options("-c synchronous_commit=on");
        if config.get_application_name().is_none() {
            config.application_name("cstagate");
        }
        Ok(PgTarget { config, ssl, local, ca })
    }

    /// A connection manager for this database with `password`: the store's pool, and the
    /// cluster's lease connection ([`crate::cluster::pg`]), connect alike.
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn manager(&self, password: Option<String>) -> Result<Manager, StoreError> {
        let mut config = self.config.clone();
        if let Some(p) = password {
            config.password(p);
        }
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        // No TLS connector at all with `disable`: tokio-postgres asks one for the host's name
        // even then, and a Unix socket has none.
        Ok(match self.ssl {
            SslMode::Disable => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            SslMode::Require | SslMode::VerifyFull => Manager::from_config(config, self.connector()?, manager_config),
        })
    }

    /// The `sslmode` in effect.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl
    }

    /// The TLS connector: verified against the public roots and `database_ca`, or encryption
    /// only for `require`.
    fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let mut config = match self.ssl {
            SslMode::Require => {
                let provider = Arc::new(crate::tls::ring_provider());
                rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StoreError::Connection(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                    .with_no_client_auth()
            }
            SslMode::VerifyFull | SslMode::Disable => (*crate::http_client::client_config(&self.ca).map_err(StoreError::Connection)?).clone(),
        };
        // Not HTTP.
        config.alpn_protocols.clear();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// `sslmode=require`: the server's signatures are checked (the handshake is real) but not who
/// its certificate names, as libpq does; for a network the operator trusts against passive
/// listening only.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &rustls::pki_types::ServerName<'_>, _: &[u8], _: rustls::pki_types::UnixTime) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Reply<T> = std::sync::mpsc::SyncSender<Result<T, StoreError>>;

/// What the store's thread is asked.
enum Request {
    /// The writes, and the fence (owner and epochs by PBX) with `[cluster]`.
    Apply(Vec<StoreWrite>, Option<(String, Vec<(String, i64)>)>, Reply<()>),
    Snapshot(Millis, Reply<Snapshot>),
    Association(String, Reply<Option<AssociationView>>),
    Audit(AuditFilter, Reply<Vec<AuditRecord>>),
    List(AssociationFilter, Reply<Vec<AssociationView>>),
    Setting(String, Reply<String>),
    /// Take (`true`) or give back (`false`) an account's claim, with the instance's id.
    Claim(AccountClaim, bool, String, Reply<bool>),
    Counters(Vec<String>, Reply<Vec<(CounterKey, u32)>>),
    BindingsOf(String, String, Reply<Vec<Binding>>),
}

/// The PostgreSQL store: a handle to its thread (see the module doc).
pub struct PostgresStore {
    requests: tokio::sync::mpsc::Sender<Request>,
    /// `[cluster]`: the epochs every write for a PBX must carry ([`PostgresStore::fenced`]).
    fence: Option<super::fence::Fence>,
}

impl PostgresStore {
    /// Connect to `target` with `password` (read from `database_password_env`), apply the
    /// migrations this database lacks, and return once it is ready.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the login, a migration fails, or the schema is
    /// newer than this gateway knows.
    pub fn open(target: &PgTarget, password: Option<String>) -> Result<PostgresStore, StoreError> {
        if !target.local && target.ssl == SslMode::Disable {
            tracing::warn!(hosts = ?target.config.get_hosts(), "PostgreSQL over plain TCP off this machine (sslmode=disable): bindings and the audit log cross the network in clear");
        }
        let manager = target.manager(password)?;
        let (requests, rx) = tokio::sync::mpsc::channel(2);
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cstagate-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready_tx.send(Err(StoreError::Connection(format!("runtime: {e}"))))),
                };
                rt.block_on(worker(manager, ready_tx, rx));
            })
            .map_err(|e| StoreError::Connection(format!("cannot start the store's thread: {e}")))?;
        ready.recv_timeout(OPEN_TIMEOUT).map_err(|_| StoreError::Connection(format!("PostgreSQL not ready within {OPEN_TIMEOUT:?}")))??;
        Ok(PostgresStore { requests, fence: None })
    }

    /// Fence every write batch with `fence` (`[cluster]`): each batch's first statements check,
    /// in its transaction, that this instance holds the lease of every PBX it writes for with
    /// the epoch it knows (`cstagate_fence`); otherwise the whole batch is refused
    /// ([`StoreError::Fenced`]), nothing of it written, and the refused epoch handed back to the
    /// fence's owner, which drops the PBX. A batch for a PBX not owned here is refused before it
    /// is sent. Writes for no PBX (an account's failure counter) are not fenced.
    #[must_use]
    pub fn fenced(mut self, fence: super::fence::Fence) -> PostgresStore {
        self.fence = Some(fence);
        self
    }

    /// A server setting as the store's own sessions see it (`SHOW name`): for an operator's
    /// check, and for the tests of `synchronous_commit`.
    ///
    /// # Errors
    /// Unknown setting, or the server is unreachable.
    pub fn setting(&self, name: &str) -> Result<String, StoreError> {
        self.call(|r| Request::Setting(name.to_owned(), r))
    }

    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // At most one request is in flight (the store is not `Sync`, each call waits): the queue
        // fills only behind an operation that outlived its caller's wait.
        self.requests.try_send(request(tx)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => StoreError::Connection("the store is still busy with an earlier operation".into()),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => StoreError::Connection("the store's thread has stopped".into()),
        })?;
        // The thread bounds each operation by OP_TIMEOUT; this is a backstop.
        rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(5)).map_err(|_| StoreError::Connection(format!("no answer from the store within {OP_TIMEOUT:?}")))?
    }
}

impl Store for PostgresStore {
    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let fence = match &self.fence {
            None => None,
            Some(f) => Some((f.owner().to_owned(), f.epochs(writes.iter().filter_map(StoreWrite::pbx)).map_err(|n| StoreError::Fenced { pbx: n.0 })?)),
        };
        let result = self.call(|r| Request::Apply(writes.to_vec(), fence.clone(), r));
        if let (Err(StoreError::Fenced { pbx }), Some(f), Some((_, epochs))) = (&result, &self.fence, &fence) {
            if let Some((_, e)) = epochs.iter().find(|(p, _)| p == pbx) {
                tracing::warn!(pbx = %pbx, epoch = e, "a write batch was fenced: another instance holds this PBX's lease; dropping it");
                f.refused(pbx, *e);
            }
        }
        result
    }
    fn snapshot(&self, now: Millis) -> Result<Snapshot, StoreError> {
        self.call(|r| Request::Snapshot(now, r))
    }
    fn association(&self, id: &str) -> Result<Option<AssociationView>, StoreError> {
        self.call(|r| Request::Association(id.to_owned(), r))
    }
    fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.call(|r| Request::Audit(f.clone(), r))
    }
    fn list_associations(&self, f: &AssociationFilter) -> Result<Vec<AssociationView>, StoreError> {
        self.call(|r| Request::List(f.clone(), r))
    }
    fn claim_account(&mut self, claim: &AccountClaim) -> Result<bool, StoreError> {
        let instance = self.fence.as_ref().map(|f| f.owner().to_owned()).unwrap_or_default();
        self.call(|r| Request::Claim(claim.clone(), true, instance, r))
    }
    fn release_account(&mut self, claim: &AccountClaim) -> Result<(), StoreError> {
        self.call(|r| Request::Claim(claim.clone(), false, String::new(), r)).map(drop)
    }
    fn account_counters(&self, accounts: &[(TenantId, AccountId)]) -> Result<Vec<(CounterKey, u32)>, StoreError> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let keys = accounts.iter().map(|(tenant, account)| key_text(&CounterKey::Account { tenant: tenant.clone(), account: account.clone() })).collect();
        self.call(|r| Request::Counters(keys, r))
    }
    fn bindings_of(&self, tenant: &str, account: &str) -> Result<Option<Vec<Binding>>, StoreError> {
        self.call(|r| Request::BindingsOf(tenant.to_owned(), account.to_owned(), r)).map(Some)
    }
}

/// The store's thread: the pool, the migrations, then one request at a time until the store is
/// dropped.
async fn worker(manager: Manager, ready: std::sync::mpsc::SyncSender<Result<(), StoreError>>, mut rx: tokio::sync::mpsc::Receiver<Request>) {
    let pool = match Pool::builder(manager).max_size(POOL_SIZE).runtime(Runtime::Tokio1).wait_timeout(Some(OP_TIMEOUT)).create_timeout(Some(CONNECT_TIMEOUT)).recycle_timeout(Some(CONNECT_TIMEOUT)).build() {
        Ok(p) => p,
        Err(e) => return drop(ready.send(Err(StoreError::Connection(e.to_string())))),
    };
    let migrated = match tokio::time::timeout(OPEN_TIMEOUT, migrate(&pool)).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Connection(format!("migrations not done within {OPEN_TIMEOUT:?}"))),
    };
    let failed = migrated.is_err();
    let _ = ready.send(migrated);
    if failed {
        return;
    }
    while let Some(req) = rx.recv().await {
        match req {
            Request::Apply(w, f, r) => drop(r.send(bounded(apply(&pool, &w, f.as_ref())).await)),
            Request::Snapshot(now, r) => drop(r.send(bounded(snapshot(&pool, now)).await)),
            Request::Association(id, r) => drop(r.send(bounded(association(&pool, &id)).await)),
            Request::Audit(f, r) => drop(r.send(bounded(audit(&pool, &f)).await)),
            Request::List(f, r) => drop(r.send(bounded(list_associations(&pool, &f)).await)),
            Request::Setting(name, r) => drop(r.send(bounded(setting(&pool, &name)).await)),
            Request::Claim(c, take, instance, r) => drop(r.send(bounded(claim(&pool, &c, take, &instance)).await)),
            Request::Counters(keys, r) => drop(r.send(bounded(counters(&pool, &keys)).await)),
            Request::BindingsOf(tenant, account, r) => drop(r.send(bounded(bindings_of(&pool, &tenant, &account)).await)),
        }
    }
}

async fn bounded<T>(op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, op).await.unwrap_or_else(|_| Err(StoreError::Connection(format!("no answer from PostgreSQL within {OP_TIMEOUT:?}"))))
}

/// A PostgreSQL error: the server's own (with its SQLSTATE), or the connection's.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Postgres { sqlstate: Some(d.code().code().to_owned()), message: d.message().to_owned() },
        None => StoreError::Connection(e.to_string()),
    }
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Connection(format!("PostgreSQL connection: {other}")),
    }
}

/// Apply the migrations the database lacks, each in its own transaction under the advisory
/// lock, so that gateways starting together apply each once.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)").await.map_err(pg)?;
        let newest: Option<i32> = tx.query_one("SELECT max(version) FROM schema_migrations", &[]).await.map_err(pg)?.try_get(0).map_err(pg)?;
        if let Some(n) = newest.filter(|n| *n > known) {
            return Err(StoreError::Corrupt(format!("the database's schema is version {n}, newer than this gateway knows ({known}): upgrade the gateway")));
        }
        if tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await.map_err(pg)?.is_none() {
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", &[version, &(crate::clock::now_ms() as i64)]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            tracing::info!(version, "PostgreSQL schema migrated");
        } else {
            tx.commit().await.map_err(pg)?;
        }
    }
    Ok(())
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// Run `steps` pipelined: each is polled first in order (tokio-postgres sends a request when its
/// future is first polled, so the server receives them in this order, in one go), then all until
/// done. The first error, in order, is the result: after it the server refused the rest.
async fn pipeline(steps: Vec<Step<'_>>) -> Result<(), tokio_postgres::Error> {
    let mut steps: Vec<Option<Step<'_>>> = steps.into_iter().map(Some).collect();
    let mut results: Vec<Option<Result<(), tokio_postgres::Error>>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in steps.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        *result = Some(r);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    results.into_iter().flatten().collect()
}

type Param = Box<dyn ToSql + Sync + Send>;

fn ms(t: Millis) -> Param {
    Box::new(t as i64)
}
fn text(s: &str) -> Param {
    Box::new(s.to_owned())
}

/// One transaction: BEGIN, the writes and COMMIT in one pipeline. A statement that fails makes
/// the server refuse the ones after it and turn the COMMIT into a rollback: nothing is written.
/// With a fence, its checks come first (`cstagate_fence`, one per PBX), and a stale epoch is
/// [`StoreError::Fenced`].
async fn apply(pool: &Pool, writes: &[StoreWrite], fence: Option<&(String, Vec<(String, i64)>)>) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let mut statements: Vec<(&'static str, Vec<Param>)> = Vec::with_capacity(writes.len() + 1);
    if let Some((owner, epochs)) = fence {
        for (pbx, epoch) in epochs {
            statements.push(("SELECT cstagate_fence($1, $2, $3)", vec![text(pbx), text(owner), Box::new(*epoch)]));
        }
    }
    for w in writes {
        match w {
            StoreWrite::Association(v) => {
                let json = serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let state = serde_json::to_value(v.state).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
                statements.push((
                    "INSERT INTO associations (id, tenant, account, pbx, extension, state, final, view, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, final = excluded.final, view = excluded.view, updated_at = excluded.updated_at",
                    vec![text(v.id.as_str()), text(v.tenant.as_str()), text(v.account.as_str()), text(v.pbx.as_str()), text(v.extension.as_str()), Box::new(state), Box::new(v.state.is_final(v.retryable)), Box::new(json), ms(v.history.last().map_or(0, |s| s.at))],
                ));
            }
            StoreWrite::Bind(b) => statements.push((
                "INSERT INTO bindings (pbx, extension, tenant, account, did, did_verified, bound_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                vec![text(b.pbx.as_str()), text(b.extension.as_str()), text(b.tenant.as_str()), text(b.account.as_str()), Box::new(b.did.clone()), Box::new(b.did_verified), ms(b.bound_at)],
            )),
            StoreWrite::Unbind { pbx, extension } => statements.push(("DELETE FROM bindings WHERE pbx = $1 AND extension = $2", vec![text(pbx.as_str()), text(extension.as_str())])),
            // Several gateways count one account's failures: each adds its own, atomically,
            // rather than write its count over the others' (see `StoreWrite::Counter`: a value
            // above 0 is one failure more, 0 a reset).
            StoreWrite::Counter { key, value: 0 } => statements.push(("INSERT INTO counters (key, value) VALUES ($1, 0) ON CONFLICT (key) DO UPDATE SET value = 0", vec![Box::new(key_text(key))])),
            StoreWrite::Counter { key, value } => statements.push(("INSERT INTO counters (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = counters.value + 1", vec![Box::new(key_text(key)), Box::new(i64::from(*value))])),
            StoreWrite::ProofCall(c) => {
                statements.push(("INSERT INTO proof_calls (pbx, extension, tenant, account, at) VALUES ($1, $2, $3, $4, $5)", vec![text(c.pbx.as_str()), text(c.extension.as_str()), text(c.tenant.as_str()), text(c.account.as_str()), ms(c.at)]));
                // Older than a day is of no use to the hourly limit.
                statements.push(("DELETE FROM proof_calls WHERE at < $1", vec![ms(c.at.saturating_sub(86_400_000))]));
            }
            StoreWrite::Block(b) => statements.push((
                "INSERT INTO owner_blocks (tenant, account, pbx, extension, until) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, account, pbx, extension) DO UPDATE SET until = excluded.until",
                vec![text(b.tenant.as_str()), text(b.account.as_str()), text(b.pbx.as_str()), text(b.extension.as_str()), ms(b.until)],
            )),
            StoreWrite::Unblock { tenant, account, pbx, extension } => statements.push(("DELETE FROM owner_blocks WHERE tenant = $1 AND account = $2 AND pbx = $3 AND extension = $4", vec![text(tenant.as_str()), text(account.as_str()), text(pbx.as_str()), text(extension.as_str())])),
            StoreWrite::Audit(a) => statements.push((
                "INSERT INTO audit (at, tenant, account, pbx, extension, association, step, result) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![ms(a.at), text(a.tenant.as_str()), text(a.account.as_str()), text(a.pbx.as_str()), text(a.extension.as_str()), text(a.association.as_str()), text(&a.step), text(&a.result)],
            )),
        }
    }
    // Prepared once per connection (deadpool's statement cache), then only executed.
    let mut prepared: Vec<(Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::with_capacity(statements.len());
    for (sql, params) in &statements {
        let stmt = client.prepare_cached(sql).await.map_err(pg)?;
        prepared.push((stmt, params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()));
    }
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(prepared.len() + 2);
    steps.push(Box::pin(client.batch_execute("BEGIN")));
    for (stmt, params) in &prepared {
        steps.push(Box::pin(async { client.execute(stmt, params).await.map(drop) }));
    }
    steps.push(Box::pin(client.batch_execute("COMMIT")));
    let result = pipeline(steps).await;
    let fenced = result.as_ref().err().and_then(|e| e.as_db_error()).filter(|d| d.code().code() == FENCE_SQLSTATE).map(|d| d.detail().unwrap_or_default().to_owned());
    match (finish(client, result), fenced) {
        (Err(_), Some(pbx)) => Err(StoreError::Fenced { pbx }),
        (r, _) => r,
    }
}

/// The SQLSTATE `cstagate_fence` raises for a stale lease (migration 0003).
const FENCE_SQLSTATE: &str = "CSG01";

/// The result of an operation on `client`; a connection that failed other than by the server's
/// refusal (closed, I/O) leaves the pool rather than serve the next operation.
fn finish(client: deadpool_postgres::Object, result: Result<(), tokio_postgres::Error>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            if e.as_db_error().is_none() {
                drop(deadpool_postgres::Object::take(client));
            }
            Err(pg(e))
        }
    }
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn view(json: &str) -> Result<AssociationView, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The snapshot, read in one repeatable-read transaction: the tables as of one moment.
async fn snapshot(pool: &Pool, now: Millis) -> Result<Snapshot, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let sql = [
        "SELECT pbx, extension, tenant, account, did, did_verified, bound_at FROM bindings",
        "SELECT key, value FROM counters",
        "SELECT pbx, extension, tenant, account, at FROM proof_calls WHERE at >= $1 ORDER BY at",
        "SELECT tenant, account, pbx, extension, until FROM owner_blocks WHERE until > $1",
        "SELECT view::text FROM associations WHERE NOT final",
    ];
    let mut stmts = Vec::with_capacity(sql.len());
    for q in sql {
        stmts.push(client.prepare_cached(q).await.map_err(pg)?);
    }
    let hour_ago = now.saturating_sub(3_600_000) as i64;
    let now = now as i64;
    let mut rows: [Vec<Row>; 5] = Default::default();
    {
        let [bindings, counters, calls, blocks, open] = &mut rows;
        let steps: Vec<Step<'_>> = vec![
            Box::pin(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")),
            Box::pin(async { client.query(&stmts[0], &[]).await.map(|r| *bindings = r) }),
            Box::pin(async { client.query(&stmts[1], &[]).await.map(|r| *counters = r) }),
            Box::pin(async { client.query(&stmts[2], &[&hour_ago]).await.map(|r| *calls = r) }),
            Box::pin(async { client.query(&stmts[3], &[&now]).await.map(|r| *blocks = r) }),
            Box::pin(async { client.query(&stmts[4], &[]).await.map(|r| *open = r) }),
            Box::pin(client.batch_execute("COMMIT")),
        ];
        let result = pipeline(steps).await;
        finish(client, result)?;
    }
    let [bindings, counters, calls, blocks, open] = rows;
    let mut s = Snapshot::default();
    for r in &bindings {
        s.bindings.push(binding(r)?);
    }
    for r in &counters {
        let k: String = get(r, 0)?;
        let v: i64 = get(r, 1)?;
        let v = u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("counter {k:?} = {v}")))?;
        match key_parse(&k).ok_or_else(|| StoreError::Corrupt(format!("counter key {k:?}")))? {
            StoredKey::Counter(key) => s.counters.push((key, v)),
            StoredKey::Retired => {}
        }
    }
    for r in &calls {
        s.proof_calls.push(ProofCall { pbx: get::<String>(r, 0)?.into(), extension: get::<String>(r, 1)?.into(), tenant: get::<String>(r, 2)?.into(), account: get::<String>(r, 3)?.into(), at: get::<i64>(r, 4)? as Millis });
    }
    for r in &blocks {
        s.blocks.push(OwnerBlock { tenant: get::<String>(r, 0)?.into(), account: get::<String>(r, 1)?.into(), pbx: get::<String>(r, 2)?.into(), extension: get::<String>(r, 3)?.into(), until: get::<i64>(r, 4)? as Millis });
    }
    for r in &open {
        s.in_flight.push(view(&get::<String>(r, 0)?)?);
    }
    Ok(s)
}

async fn association(pool: &Pool, id: &str) -> Result<Option<AssociationView>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached("SELECT view::text FROM associations WHERE id = $1").await.map_err(pg)?;
    let mut found = None;
    let result = client.query_opt(&stmt, &[&id]).await.map(|r| found = r);
    finish(client, result)?;
    found.map(|r| view(&get::<String>(&r, 0)?)).transpose()
}

/// Audit records, newest last: the newest `limit` (1000 when 0), as SQLite does.
async fn audit(pool: &Pool, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client
        .prepare_cached(
            "SELECT at, tenant, account, pbx, extension, association, step, result FROM audit
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR account = $2) AND ($3::text IS NULL OR extension = $3)
             ORDER BY seq DESC LIMIT $4",
        )
        .await
        .map_err(pg)?;
    let tenant = f.tenant.as_ref().map(|t| t.as_str().to_owned());
    let limit = if f.limit == 0 { 1000 } else { f.limit } as i64;
    let mut rows = Vec::new();
    let result = client.query(&stmt, &[&tenant, &f.account, &f.extension, &limit]).await.map(|r| rows = r);
    finish(client, result)?;
    let mut v = rows
        .iter()
        .map(|r| Ok(AuditRecord { at: get::<i64>(r, 0)? as Millis, tenant: get::<String>(r, 1)?.into(), account: get::<String>(r, 2)?.into(), pbx: get::<String>(r, 3)?.into(), extension: get::<String>(r, 4)?.into(), association: get::<String>(r, 5)?.into(), step: get(r, 6)?, result: get(r, 7)? }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    v.reverse();
    Ok(v)
}

/// Associations, newest first (by creation), as SQLite lists them.
async fn list_associations(pool: &Pool, f: &AssociationFilter) -> Result<Vec<AssociationView>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client
        .prepare_cached(
            "SELECT view::text FROM associations
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR extension = $3) AND ($4::text IS NULL OR account = $4)
             ORDER BY seq DESC LIMIT $5",
        )
        .await
        .map_err(pg)?;
    let tenant = f.tenant.as_ref().map(|t| t.as_str().to_owned());
    let limit = if f.limit == 0 { MAX_ASSOCIATIONS_LISTED } else { f.limit.min(MAX_ASSOCIATIONS_LISTED) } as i64;
    let mut rows = Vec::new();
    let result = client.query(&stmt, &[&tenant, &f.state, &f.extension, &f.account, &limit]).await.map(|r| rows = r);
    finish(client, result)?;
    rows.iter().map(|r| view(&get::<String>(r, 0)?)).collect()
}

async fn setting(pool: &Pool, name: &str) -> Result<String, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let mut value = String::new();
    let result = client.query_one("SELECT current_setting($1)", &[&name]).await.and_then(|r| r.try_get(0).map(|v| value = v));
    finish(client, result)?;
    Ok(value)
}

/// A claim without its association stored this long frees the account: its gateway crashed, or
/// its commit failed, between the claim and the commit (which takes [`OP_TIMEOUT`] at most).
pub const CLAIM_ORPHANED_AFTER: Duration = Duration::from_secs(60);

/// Take an account's claim for `c.association` (`true` when this one holds it now), in one
/// statement: inserted when the account has none; taken over only from an association that is
/// final (the trigger of migration 0004 deletes such claims; this is the belt to its braces),
/// or that was never stored and whose claim is [`CLAIM_ORPHANED_AFTER`] old. Two gateways racing for one account: the row lock of the
/// conflict serialises them, and the second sees the first's claim. `take == false`: delete
/// the claim if it is still this association's.
async fn claim(pool: &Pool, c: &AccountClaim, take: bool, instance: &str) -> Result<bool, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let (tenant, account, association) = (c.tenant.as_str(), c.account.as_str(), c.association.as_str());
    let mut won = false;
    let result = if take {
        let sql = format!(
            "INSERT INTO account_claims AS c (tenant, account, association, pbx, instance, at) VALUES ($1, $2, $3, $4, $5, clock_timestamp())
             ON CONFLICT (tenant, account) DO UPDATE SET association = excluded.association, pbx = excluded.pbx, instance = excluded.instance, at = excluded.at
             WHERE EXISTS (SELECT 1 FROM associations a WHERE a.id = c.association AND a.final)
                OR (NOT EXISTS (SELECT 1 FROM associations a WHERE a.id = c.association) AND c.at < clock_timestamp() - interval '{} seconds')
             RETURNING association",
            CLAIM_ORPHANED_AFTER.as_secs()
        );
        match client.prepare_cached(&sql).await {
            Ok(stmt) => client.query_opt(&stmt, &[&tenant, &account, &association, &c.pbx.as_deref().unwrap_or_default(), &instance]).await.map(|row| won = row.is_some()),
            Err(e) => Err(e),
        }
    } else {
        match client.prepare_cached("DELETE FROM account_claims WHERE tenant = $1 AND account = $2 AND association = $3").await {
            Ok(stmt) => client.execute(&stmt, &[&tenant, &account, &association]).await.map(drop),
            Err(e) => Err(e),
        }
    };
    finish(client, result)?;
    Ok(won)
}

/// The counters stored under `keys` (those that exist).
async fn counters(pool: &Pool, keys: &[String]) -> Result<Vec<(CounterKey, u32)>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let mut rows = Vec::new();
    let result = match client.prepare_cached("SELECT key, value FROM counters WHERE key = ANY($1)").await {
        Ok(stmt) => client.query(&stmt, &[&keys]).await.map(|r| rows = r),
        Err(e) => Err(e),
    };
    finish(client, result)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let k: String = get(r, 0)?;
        let v = u32::try_from(get::<i64>(r, 1)?).map_err(|_| StoreError::Corrupt(format!("counter {k:?}")))?;
        if let Some(StoredKey::Counter(key)) = key_parse(&k) {
            out.push((key, v));
        }
    }
    Ok(out)
}

/// An account's bindings on every PBX.
async fn bindings_of(pool: &Pool, tenant: &str, account: &str) -> Result<Vec<Binding>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let mut rows = Vec::new();
    let result = match client.prepare_cached("SELECT pbx, extension, tenant, account, did, did_verified, bound_at FROM bindings WHERE tenant = $1 AND account = $2 ORDER BY pbx, extension").await {
        Ok(stmt) => client.query(&stmt, &[&tenant, &account]).await.map(|r| rows = r),
        Err(e) => Err(e),
    };
    finish(client, result)?;
    rows.iter().map(binding).collect()
}

fn binding(r: &Row) -> Result<Binding, StoreError> {
    Ok(Binding { pbx: get::<String>(r, 0)?.into(), extension: get::<String>(r, 1)?.into(), tenant: get::<String>(r, 2)?.into(), account: get::<String>(r, 3)?.into(), did: get(r, 4)?, did_verified: get(r, 5)?, bound_at: get::<i64>(r, 6)? as Millis })
}
