//! The lease statements: each one SQL statement on the database's clock (`now()`), so that the
//! instances' clocks are never compared. The lease rows and the fence function are migration
//! 0003 (`src/store/migrations/postgres/`), applied by the store at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Runtime};

use crate::store::postgres::{pg, pool_error, PgTarget};
use crate::store::StoreError;

/// One PBX's lease row as the database holds it (`GET /v1/pbx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub pbx: String,
    pub owner: String,
    pub epoch: i64,
    /// Whether `expires_at` is still ahead of the database's clock.
    pub live: bool,
    /// The owner's internal base URL, from its heartbeat row (`None` once it has left): where
    /// requests for this PBX are forwarded ([`super::forward`]).
    pub advertise: Option<String>,
}

/// The lease statements one instance has sent, by kind (`/metrics`:
/// `cstagate_lease_statements_total{kind}`): what the leases cost the database, measured rather
/// than derived (BENCHMARKS.md, "Several gateways"). Counted when a statement is sent, answered or
/// not.
#[derive(Debug, Default)]
pub struct LeaseStatements {
    heartbeat: AtomicU64,
    acquire: AtomicU64,
    renew: AtomicU64,
    release: AtomicU64,
    leave: AtomicU64,
    read: AtomicU64,
}

impl LeaseStatements {
    /// The counts by kind: `heartbeat` (with the count of live instances), `acquire`, `renew`,
    /// `release`, `leave`, `read` (the lease table, for `GET /v1/pbx`).
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [("heartbeat", n(&self.heartbeat)), ("acquire", n(&self.acquire)), ("renew", n(&self.renew)), ("release", n(&self.release)), ("leave", n(&self.leave)), ("read", n(&self.read))]
    }
}

fn sent(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The lease connection of one instance: its own small pool, apart from the store's, so that a
/// long commit never delays a renewal.
pub struct LeaseDb {
    pool: Pool,
    me: String,
    advertise: String,
    ttl_ms: i64,
    statements: Arc<LeaseStatements>,
}

impl LeaseDb {
    /// The lease connection of instance `me` (advertised at `advertise`) on `target`. Connects
    /// lazily; every operation is bounded by `op_timeout` (a third of the ttl at most, so that a
    /// database that does not answer never delays giving a PBX up).
    ///
    /// # Errors
    /// The TLS configuration cannot be built.
    pub fn new(target: &PgTarget, password: Option<String>, me: &str, advertise: &str, ttl: Duration, op_timeout: Duration) -> Result<LeaseDb, StoreError> {
        let pool = Pool::builder(target.manager(password)?)
            .max_size(2)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(op_timeout))
            .create_timeout(Some(op_timeout))
            .recycle_timeout(Some(op_timeout))
            .build()
            .map_err(|e| StoreError::Connection(e.to_string()))?;
        Ok(LeaseDb { pool, me: me.to_owned(), advertise: advertise.to_owned(), ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX), statements: Arc::default() })
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The statements sent so far, by kind.
    pub fn statements(&self) -> Arc<LeaseStatements> {
        self.statements.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// This instance's heartbeat, and how many instances are alive (heartbeat newer than the
    /// ttl), this one included.
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn heartbeat(&self) -> Result<usize, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "WITH hb AS (INSERT INTO instances (id, advertise, heartbeat_at) VALUES ($1, $2, now())
                             ON CONFLICT (id) DO UPDATE SET advertise = excluded.advertise, heartbeat_at = excluded.heartbeat_at RETURNING id)
                 SELECT count(*) FROM instances WHERE heartbeat_at > now() - $3::bigint * interval '1 millisecond' AND id <> (SELECT id FROM hb)",
            )
            .await
            .map_err(pg)?;
        sent(&self.statements.heartbeat);
        let others: i64 = c.query_one(&stmt, &[&self.me, &self.advertise, &self.ttl_ms]).await.map_err(pg)?.try_get(0).map_err(pg)?;
        Ok(usize::try_from(others).unwrap_or(0) + 1)
    }

    /// Take `pbx`'s lease if it is free, expired, or already this instance's (a restart under
    /// the same id): the new epoch, or `None` when another instance holds it alive.
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn acquire(&self, pbx: &str) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO pbx_leases (pbx, owner, epoch, expires_at) VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (pbx) DO UPDATE SET owner = excluded.owner, epoch = pbx_leases.epoch + 1, expires_at = excluded.expires_at
                 WHERE pbx_leases.expires_at <= now() OR pbx_leases.owner = excluded.owner
                 RETURNING epoch",
            )
            .await
            .map_err(pg)?;
        sent(&self.statements.acquire);
        let row = c.query_opt(&stmt, &[&pbx, &self.me, &self.ttl_ms]).await.map_err(pg)?;
        row.map(|r| r.try_get::<_, i64>(0).map_err(pg)).transpose()
    }

    /// Extend `pbx`'s lease held with `epoch` to now + ttl: `false` when it expired or another
    /// instance holds it (then this instance must drop the PBX).
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn renew(&self, pbx: &str, epoch: i64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("UPDATE pbx_leases SET expires_at = now() + $4::bigint * interval '1 millisecond' WHERE pbx = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()")
            .await
            .map_err(pg)?;
        sent(&self.statements.renew);
        Ok(c.execute(&stmt, &[&pbx, &self.me, &epoch, &self.ttl_ms]).await.map_err(pg)? == 1)
    }

    /// Hand `pbx`'s lease held with `epoch` back (it expires now): another instance may take it
    /// at once.
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn release(&self, pbx: &str, epoch: i64) -> Result<(), StoreError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached("UPDATE pbx_leases SET expires_at = now() WHERE pbx = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()").await.map_err(pg)?;
        sent(&self.statements.release);
        c.execute(&stmt, &[&pbx, &self.me, &epoch]).await.map_err(pg)?;
        Ok(())
    }

    /// This instance leaves (a clean stop): its heartbeat is removed, so that the others count
    /// it out at once.
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        sent(&self.statements.leave);
        c.execute("DELETE FROM instances WHERE id = $1", &[&self.me]).await.map_err(pg)?;
        Ok(())
    }

    /// Every lease row, by PBX, with its owner's advertised URL.
    ///
    /// # Errors
    /// The database did not answer or refused.
    pub async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let c = self.client().await?;
        sent(&self.statements.read);
        let rows = c.query("SELECT l.pbx, l.owner, l.epoch, l.expires_at > now(), i.advertise FROM pbx_leases l LEFT JOIN instances i ON i.id = l.owner ORDER BY l.pbx", &[]).await.map_err(pg)?;
        rows.iter().map(|r| Ok(LeaseRow { pbx: r.try_get(0).map_err(pg)?, owner: r.try_get(1).map_err(pg)?, epoch: r.try_get(2).map_err(pg)?, live: r.try_get(3).map_err(pg)?, advertise: r.try_get(4).map_err(pg)? })).collect()
    }
}
