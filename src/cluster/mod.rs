//! Several gateways on one PostgreSQL database (`[cluster]`): each PBX's CSTA link is held by
//! the one instance that owns the PBX's lease.
//!
//! - [`lease`]: the state machine of one instance's leases, sans IO (when to renew, when to
//!   give a PBX up, what to take and hand back), driven by the monotonic clock.
//! - [`pg`]: the lease statements, one SQL statement each, on the database's clock.
//! - [`shell`]: the thin tokio task that runs the rounds and tells the gateway which PBXs it owns.
//! - [`gate`]: which PBXs' links run here and which PBXs the engine acts for, by the leases.
//! - [`forward`]: a request for a PBX owned by another instance, forwarded there (the routing
//!   itself, before the engine, is the API's: `crate::api::route`).
//!
//! The database is the only judge of ownership: a lease row per PBX (`owner`, `epoch`,
//! `expires_at`), taken only when free or expired, its epoch raised at each new owner, and the
//! store's writes for a PBX refused unless they carry the live epoch (fencing).

pub mod forward;
pub mod gate;
pub mod lease;
pub mod pg;
pub mod shell;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The epochs of the PBXs this instance owns, shared by the lease shell (which sets them) and
/// the PostgreSQL store (which puts them in each write batch, [`crate::store::PostgresStore`]):
/// every write for a PBX carries the epoch, and the database refuses the batch unless it is the
/// live one. A refused epoch is handed back to the shell, which drops the PBX.
#[derive(Clone)]
pub struct Fence {
    owner: String,
    epochs: Arc<Mutex<HashMap<String, i64>>>,
    refused: tokio::sync::mpsc::Sender<(String, i64)>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// A write for a PBX this instance does not own (or no longer): refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOwned(pub String);

impl Fence {
    /// The fence of instance `owner`, and where its refusals arrive (bounded: the shell also
    /// finds a lost lease at its next renewal, so a refusal dropped when full is not lost).
    pub fn new(owner: &str) -> (Fence, tokio::sync::mpsc::Receiver<(String, i64)>) {
        let (refused, rx) = tokio::sync::mpsc::channel(64);
        (Fence { owner: owner.to_owned(), epochs: Arc::default(), refused }, rx)
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// `pbx` is owned with `epoch` from now (`Some`), or no longer (`None`).
    pub fn set(&self, pbx: &str, epoch: Option<i64>) {
        let mut m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        match epoch {
            Some(e) => m.insert(pbx.to_owned(), e),
            None => m.remove(pbx),
        };
    }

    /// The epochs of `pbxs`, each once, for a batch's fence.
    ///
    /// # Errors
    /// One of them is not owned here.
    pub fn epochs<'a>(&self, pbxs: impl IntoIterator<Item = &'a str>) -> Result<Vec<(String, i64)>, NotOwned> {
        let m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, i64)> = Vec::new();
        for p in pbxs {
            if out.iter().any(|(q, _)| q == p) {
                continue;
            }
            match m.get(p) {
                Some(e) => out.push((p.to_owned(), *e)),
                None => return Err(NotOwned(p.to_owned())),
            }
        }
        Ok(out)
    }

    /// The database refused a batch fenced with `pbx`'s `epoch`: forget it, tell the shell.
    pub fn refused(&self, pbx: &str, epoch: i64) {
        let mut m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if m.get(pbx) == Some(&epoch) {
            m.remove(pbx);
        }
        drop(m);
        let _ = self.refused.try_send((pbx.to_owned(), epoch));
    }
}

/// What `cstagate run` builds for `[cluster]` before the gateway starts (the fence goes into
/// the store), then starts once it runs ([`Parts::start`]).
pub struct Parts {
    pub fence: Fence,
    refused: tokio::sync::mpsc::Receiver<(String, i64)>,
    db: pg::LeaseDb,
    leases: lease::Leases,
}

impl Parts {
    /// The lease connection and state of this instance over `pbxs`.
    ///
    /// # Errors
    /// The database's TLS configuration cannot be built.
    pub fn new(c: &crate::config::ClusterSettings, target: &crate::store::postgres::PgTarget, password: Option<String>, pbxs: impl IntoIterator<Item = String>) -> Result<Parts, crate::store::StoreError> {
        let timing = lease::Timing { ttl: c.lease_ttl };
        let db = pg::LeaseDb::new(target, password, &c.instance_id, &c.advertise, c.lease_ttl, timing.renew_every())?;
        let (fence, refused) = Fence::new(&c.instance_id);
        Ok(Parts { fence, refused, db, leases: lease::Leases::new(&c.instance_id, pbxs, timing, std::time::Instant::now()) })
    }

    /// Start the lease task and the link gate for `gateway`.
    pub fn start(self, gateway: crate::gateway::Gateway, profiles: HashMap<String, crate::config::LinkProfile>, policies: HashMap<String, crate::association::Policy>) -> shell::Cluster {
        let (gate_tx, gate_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(gate::run(gateway, profiles, policies, gate_rx));
        shell::Cluster::start(self.db, self.leases, self.fence, self.refused, gate_tx)
    }
}

/// What the API shows of the cluster (`GET /v1/pbx`): this instance's id, the PBXs it owns with
/// their epochs, and every lease row as last read (each round). Cheap to clone.
#[derive(Clone)]
pub struct ClusterView {
    pub instance_id: String,
    /// `lease_ttl`: a PBX without a live owner gets one within it (`Retry-After`).
    pub ttl: std::time::Duration,
    owned: tokio::sync::watch::Receiver<std::collections::BTreeMap<String, i64>>,
    leases: tokio::sync::watch::Receiver<Vec<pg::LeaseRow>>,
    statements: Arc<pg::LeaseStatements>,
}

impl ClusterView {
    /// The view of instance `instance_id` (built by the lease shell).
    pub(crate) fn new(instance_id: String, ttl: std::time::Duration, owned: tokio::sync::watch::Receiver<std::collections::BTreeMap<String, i64>>, leases: tokio::sync::watch::Receiver<Vec<pg::LeaseRow>>, statements: Arc<pg::LeaseStatements>) -> ClusterView {
        ClusterView { instance_id, ttl, owned, leases, statements }
    }
    /// The lease statements this instance has sent, by kind (`/metrics`).
    pub fn statements(&self) -> [(&'static str, u64); 6] {
        self.statements.snapshot()
    }
    /// `pbx`'s epoch when this instance owns it.
    pub fn epoch(&self, pbx: &str) -> Option<i64> {
        self.owned.borrow().get(pbx).copied()
    }
    /// Every PBX's lease row, as read at the last round.
    pub fn leases(&self) -> Vec<pg::LeaseRow> {
        self.leases.borrow().clone()
    }

    /// Who acts for `pbx` now, as far as this instance knows: itself (it owns the lease), the
    /// live owner of its lease row as read at the last round, or nobody (free, expired, or the
    /// owner's heartbeat row gone).
    pub fn owner(&self, pbx: &str) -> Owner {
        if self.epoch(pbx).is_some() {
            return Owner::Me;
        }
        let rows = self.leases.borrow();
        match rows.iter().find(|r| r.pbx == pbx) {
            Some(r) if r.live && r.owner != self.instance_id => match &r.advertise {
                Some(url) => Owner::Other { id: r.owner.clone(), url: url.clone() },
                None => Owner::Nobody,
            },
            _ => Owner::Nobody,
        }
    }

    /// Seconds a client should wait before asking again about a PBX without a live owner: a
    /// third of `lease_ttl` (a lease round), at least one.
    pub fn retry_after_secs(&self) -> u64 {
        (self.ttl.as_secs() / 3).max(1)
    }
}

/// Who acts for a PBX ([`ClusterView::owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This instance.
    Me,
    /// Another live instance, at its advertised base URL.
    Other { id: String, url: String },
    /// None right now (a failover in progress): 503 with `Retry-After`.
    Nobody,
}
