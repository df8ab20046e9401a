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

pub use crate::store::fence::{Fence, NotOwned};

use std::collections::HashMap;
use std::sync::Arc;

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
