//! The lease shell: a tokio task that runs [`Leases`]' rounds against the database
//! ([`LeaseDb`]), keeps the store's [`Fence`] in step, and tells the gateway which PBXs it owns
//! (the link gate, in `crate::server`). All the decisions are the state machine's; this task
//! only sends the statements, reads the monotonic clock, and bounds every wait so that a PBX is
//! given up on time even when the database does not answer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::lease::{Change, Leases, LostWhy};
use super::pg::LeaseDb;
use super::Fence;

/// A change of ownership for the link gate; `done` is answered once the gate has acted on it
/// (the link started, or closed and the PBX's associations ended and committed).
pub struct GateEvent {
    pub change: Change,
    pub done: oneshot::Sender<()>,
}

/// The running lease task.
pub struct Cluster {
    id: String,
    ttl: Duration,
    owned: watch::Receiver<BTreeMap<String, i64>>,
    leases: watch::Receiver<Vec<super::pg::LeaseRow>>,
    statements: std::sync::Arc<super::pg::LeaseStatements>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Start the lease task of `leases` on `db`; the gate hears each change on `gate`, and
    /// refusals of the store's fenced batches come back on `refused`.
    pub fn start(db: LeaseDb, leases: Leases, fence: Fence, refused: mpsc::Receiver<(String, i64)>, gate: mpsc::Sender<GateEvent>) -> Cluster {
        let (owned_tx, owned) = watch::channel(BTreeMap::new());
        let (rows_tx, rows) = watch::channel(Vec::new());
        let (stop, stopped) = oneshot::channel();
        let id = db.me().to_owned();
        let ttl = leases.timing().ttl;
        let statements = db.statements();
        let task = tokio::spawn(run(Shell { db, leases, fence, gate, owned: owned_tx, rows: rows_tx }, refused, stopped));
        Cluster { id, ttl, owned, leases: rows, statements, stop: Some(stop), task }
    }

    /// What the API shows of the cluster.
    pub fn view(&self) -> super::ClusterView {
        super::ClusterView::new(self.id.clone(), self.ttl, self.owned.clone(), self.leases.clone(), self.statements.clone())
    }

    /// The PBXs this instance owns now, with their epochs.
    pub fn owned(&self) -> BTreeMap<String, i64> {
        self.owned.borrow().clone()
    }

    /// Watch the owned PBXs.
    pub fn watch(&self) -> watch::Receiver<BTreeMap<String, i64>> {
        self.owned.clone()
    }

    /// Stop (the gateway has stopped and released its links): hand every lease back and leave,
    /// so that the other instances take the PBXs over at once rather than after the ttl.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

struct Shell {
    db: LeaseDb,
    leases: Leases,
    fence: Fence,
    gate: mpsc::Sender<GateEvent>,
    owned: watch::Sender<BTreeMap<String, i64>>,
    /// Every lease row, read at the end of each round (`GET /v1/pbx`).
    rows: watch::Sender<Vec<super::pg::LeaseRow>>,
}

impl Shell {
    /// Carry a change out: the fence, the owned map, the gate. A PBX lost because its lease is
    /// gone in the database is forgotten by the fence at once; one handed back or given up on
    /// time keeps its epoch until the gate has ended its associations (their writes still pass,
    /// while the lease lives), and only then is the lease released.
    async fn apply(&mut self, change: Change) {
        let wait = self.leases.timing().ttl / 3;
        match &change {
            Change::Gained { pbx, epoch } => {
                info!(pbx = %pbx, epoch, "PBX lease taken: starting its link");
                self.fence.set(pbx, Some(*epoch));
                self.owned.send_modify(|m| {
                    m.insert(pbx.clone(), *epoch);
                });
            }
            Change::Lost { pbx, epoch, why } => {
                warn!(pbx = %pbx, epoch, why = ?why, "PBX lease lost: closing its link");
                self.owned.send_modify(|m| {
                    m.remove(pbx);
                });
                if matches!(why, LostWhy::Refused | LostWhy::Fenced) {
                    self.fence.set(pbx, None);
                }
            }
        }
        let (done, acted) = oneshot::channel();
        let sent = self.gate.send(GateEvent { change: change.clone(), done }).await.is_ok();
        if let Change::Lost { pbx, epoch, why } = change {
            if sent {
                let _ = tokio::time::timeout(wait, acted).await;
            }
            self.fence.set(&pbx, None);
            if why == LostWhy::Released {
                if let Err(e) = tokio::time::timeout(wait, self.db.release(&pbx, epoch)).await.unwrap_or_else(|_| Err(crate::store::StoreError::Connection("release: no answer".into()))) {
                    warn!(pbx = %pbx, error = %e, "PBX lease not released: it expires by itself");
                }
            }
        }
    }

    /// One round: heartbeat, renewals (all at once), releases, then acquisitions until the share
    /// is reached; each statement bounded, the whole bounded by the next give-up.
    async fn round(&mut self, now: Instant) {
        let every = self.leases.timing().renew_every();
        let live = match tokio::time::timeout(every, self.db.heartbeat()).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                warn!(error = %e, "cluster heartbeat failed");
                None
            }
            Err(_) => {
                warn!(timeout = ?every, "cluster heartbeat: no answer from PostgreSQL");
                None
            }
        };
        let mut plan = self.leases.round(now, live.unwrap_or(1));
        if live.is_none() {
            // The database is failing: renew what is owned, take and hand back nothing.
            plan.want = 0;
            plan.release.clear();
        }
        let sent = Instant::now();
        let renewals = futures_util::future::join_all(plan.renew.iter().map(|(p, e)| tokio::time::timeout(every, self.db.renew(p, *e)))).await;
        for ((p, e), r) in plan.renew.iter().zip(renewals) {
            match r {
                Ok(Ok(ok)) => {
                    if let Some(c) = self.leases.renewed(p, *e, sent, ok) {
                        self.apply(c).await;
                    }
                }
                Ok(Err(err)) => warn!(pbx = %p, error = %err, "PBX lease not renewed"),
                Err(_) => warn!(pbx = %p, "PBX lease not renewed: no answer from PostgreSQL"),
            }
        }
        for (p, e) in plan.release {
            if let Some(c) = self.leases.release(&p, e) {
                self.apply(c).await;
            }
        }
        let mut got = 0;
        for p in plan.acquire {
            if got >= plan.want || Instant::now() >= self.leases.next_deadline() {
                break;
            }
            let sent = Instant::now();
            match tokio::time::timeout(every, self.db.acquire(&p)).await {
                Ok(Ok(epoch)) => {
                    if let Some(c) = self.leases.acquired(&p, epoch, sent, Instant::now()) {
                        got += 1;
                        self.apply(c).await;
                    }
                }
                Ok(Err(e)) => {
                    warn!(pbx = %p, error = %e, "PBX lease not taken");
                    break;
                }
                Err(_) => break,
            }
        }
        if let Ok(Ok(rows)) = tokio::time::timeout(every, self.db.leases()).await {
            self.rows.send_replace(rows);
        }
    }
}

async fn run(mut sh: Shell, mut refused: mpsc::Receiver<(String, i64)>, mut stopped: oneshot::Receiver<()>) {
    loop {
        let deadline = tokio::time::Instant::from_std(sh.leases.next_deadline());
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some((pbx, epoch)) = refused.recv() => {
                if let Some(c) = sh.leases.fenced(&pbx, epoch) {
                    sh.apply(c).await;
                }
                continue;
            }
            () = tokio::time::sleep_until(deadline) => {}
        }
        let now = Instant::now();
        for c in sh.leases.tick(now) {
            sh.apply(c).await;
        }
        if sh.leases.round_due(now) {
            // Bounded by the next give-up too: a round stuck on the database must not delay it.
            let mut bound = now + sh.leases.timing().renew_every();
            if let Some(g) = sh.leases.give_up_at() {
                bound = bound.min(g);
            }
            if tokio::time::timeout_at(tokio::time::Instant::from_std(bound), sh.round(now)).await.is_err() {
                warn!("cluster round not finished in time: given up until the next one");
            }
        }
    }
    // Stopping: the gateway released the links; hand the leases back.
    for (pbx, epoch) in sh.leases.owned() {
        sh.fence.set(&pbx, None);
        let _ = tokio::time::timeout(Duration::from_secs(2), sh.db.release(&pbx, epoch)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sh.db.leave()).await;
    info!("cluster: leases handed back");
}
