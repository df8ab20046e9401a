//! The gateway runtime: the thin tokio shell around the association engine.
//!
//! One actor task owns the [`Engine`] and the [`Store`]. Commands (API requests, IVR requests,
//! what the PBX links report) queue to it, and it sleeps until the engine's next deadline
//! ([`Engine::poll_timeout`]) when none come; it feeds a batch of them to the engine, commits all
//! their store writes in **one** transaction (group commit: durable, and cheap under load), and
//! only then answers the callers and starts the CSTA work the engine asked for on the PBX links
//! ([`links::submit`]: the one place that turns an engine request into link work).
//!
//! **One ordered path per link.** The gateway holds one [`Port`] per PBX link. Every request the
//! engine asks for goes out through it, tagged; the link hands back the results, the monitored
//! extensions' events and its losses and returns on the port's one channel, in the order it
//! handled them on the wire, and one forwarding task per link passes them on to the actor's
//! queue in that order ([`Cmd::Link`]). So the engine sees a MakeCall's result before the
//! events that followed it on the wire, and after those that came before it: no spawned task
//! per step, no reordering between results and events.
//!
//! The files: this one holds the handle ([`Gateway`]), the commands it queues to the actor
//! ([`Cmd`]) and the state the actor and the link path share ([`Shell`]); [`actor`] the batches,
//! the group commit, the answers, the stop and the rebuild after a failed commit; [`links`] the
//! ordered path to the PBX links (requests out through the ports, deliveries back); [`ended`]
//! the associations ended, counted by the actor after each commit and read by [`crate::metrics`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::association::{AccountId, AssociationId, Extension, PbxId, TenantId, Action, AdminScope, ApiInput, ApiReply, AssociationView, AuditRecord, Binding, CounterKey, Engine, IvrInput, IvrReply, OwnerBlock, Principal, Refusal};
use crate::link::{Delivery, Link};
use crate::store::{AssociationFilter, AuditFilter, Store};

mod actor;
mod ended;
mod links;

/// How long the release of a PBX link (RLRQ, then the PBX's RLRE) may take, at shutdown or when
/// a reload removes or replaces the link; a PBX that does not answer in time has its connection
/// closed.
pub const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub use ended::Ended;
use links::Pending;

pub use crate::csta::call_event;

/// Reads the API needs, answered by the actor.
pub enum Query {
    Association { principal: Principal, id: AssociationId },
    Binding { pbx: PbxId, extension: Extension },
    BindingsOf { tenant: TenantId, account: AccountId },
    Audit(AuditFilter),
    /// What the engine holds in memory.
    Sizes,
    /// Admin: failure counters and owner blocks in scope.
    Limits(AdminScope),
    /// Associations from the store (finished ones included).
    Associations(AssociationFilter),
    /// A round trip to the store (`/readyz`): answered once the store has answered a read.
    StorePing,
    /// `[cluster]` routing: the PBX association `id` is for (engine memory, else the store),
    /// whoever's it is ([`QueryResult::Pbx`]).
    PbxOf(AssociationId),
}

pub enum QueryResult {
    Association(Option<AssociationView>),
    Sizes(crate::association::Sizes),
    Bindings(Vec<Binding>),
    Audit(Vec<AuditRecord>),
    Limits { counters: Vec<(CounterKey, u32)>, blocks: Vec<OwnerBlock> },
    Associations(Vec<AssociationView>),
    StoreAnswers,
    Pbx(Option<PbxId>),
}

/// Why the gateway did not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The engine refused it (the API maps each refusal to its status).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// What the request decided could not be committed, or the store could not be read: 503,
    /// try again.
    #[error("storage unavailable: try again later")]
    Unavailable,
    /// The gateway is stopping or stopped.
    #[error("the gateway stopped")]
    Stopped,
}

type ApiTx = oneshot::Sender<Result<ApiReply, GatewayError>>;
type IvrTx = oneshot::Sender<Result<IvrReply, GatewayError>>;

enum Cmd {
    Api { input: ApiInput, reply: ApiTx },
    Ivr { input: IvrInput, reply: IvrTx },
    IvrHangup { call: String, now: Millis },
    /// The `code_issued` notification of this association was given up.
    CodeUndelivered { id: String },
    /// What a PBX link reported on the gateway's port, in the link's order. `generation` names
    /// the link (a reload replaces a PBX's link with a new one, while the old one winds down).
    Link { pbx: PbxId, generation: u64, delivery: Delivery },
    /// A configuration reload: links added, replaced or removed, policies swapped.
    Reconfigure { change: Reconfigure, reply: oneshot::Sender<()> },
    Query { query: Query, reply: oneshot::Sender<Result<QueryResult, GatewayError>> },
    /// `[cluster]`: this instance just took `pbx` over; end what its previous owner left in
    /// flight there ([`Gateway::adopt`]).
    Adopt { pbx: String, reply: oneshot::Sender<bool> },
    /// Stop after the batch in hand: nothing is written afterwards.
    Stop,
}

use crate::association::Millis;

/// What a configuration reload changes in a running gateway ([`Gateway::reconfigure`]).
pub struct Reconfigure {
    /// Every PBX's policy from now on (new associations see them).
    pub policies: HashMap<String, crate::association::Policy>,
    /// Links of PBXs added, or replacing a PBX's link whose settings changed (the old one is
    /// released; its associations in flight fail their attempt `link_down`, as on a link loss).
    pub links: Vec<(String, Link)>,
    /// PBXs removed: their associations in flight fail `pbx_removed`, their calls are cleared
    /// through their link, then it is released.
    pub removed: Vec<String>,
}

/// Handle to the running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    tx: mpsc::Sender<Cmd>,
    /// The PBX links by id; a reload swaps the whole map (readers keep the one they took).
    links: Arc<std::sync::RwLock<Arc<HashMap<String, Link>>>>,
    notifier: Option<crate::notify::Notifier>,
    stopped: Arc<tokio::sync::Notify>,
    /// Bumped whenever a binding ends, before it is committed: event streams opened under a
    /// binding check it again and end when it is gone.
    unbinds: Arc<tokio::sync::watch::Sender<u64>>,
    /// Associations ended, counted once their end is committed (for `/metrics`).
    ended: Ended,
}

/// Deliveries a link may hold for the gateway: every request in flight reserves one (beyond,
/// the request fails at once as if the link were down), events take the rest. The forwarding task
/// empties it into the actor's queue as fast as they come.
const PORT_CAPACITY: usize = 65_536;

impl Gateway {
    /// Start the actor. `links` are the PBX links by PBX id; `store` is already opened and the
    /// engine restored from it; `restored` are the actions of [`Engine::restore`] (the ends of
    /// associations that were in flight, the calls they left up), committed and carried out first.
    pub fn start(engine: Engine, store: Box<dyn Store>, links: HashMap<String, Link>, notifier: Option<crate::notify::Notifier>, restored: Vec<Action>) -> Gateway {
        let (tx, rx) = mpsc::channel(65_536);
        let mut ports = links::Ports::default();
        for (pbx, link) in &links {
            ports.attach(pbx, link, &tx);
        }
        let links = Arc::new(std::sync::RwLock::new(Arc::new(links)));
        let gw = Gateway { tx: tx.clone(), links, notifier, stopped: Arc::new(tokio::sync::Notify::new()), unbinds: Arc::new(tokio::sync::watch::Sender::new(0)), ended: Ended::default() };
        let done = gw.stopped.clone();
        let me = gw.clone();
        tokio::spawn(async move {
            actor::actor(engine, store, rx, me, ports, restored).await;
            done.notify_one();
        });
        gw
    }

    /// The PBX links by id, as they are now (a reload may replace the map afterwards).
    pub fn links(&self) -> Arc<HashMap<String, Link>> {
        match self.links.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_links(&self, links: HashMap<String, Link>) {
        match self.links.write() {
            Ok(mut l) => *l = Arc::new(links),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(links),
        }
    }

    /// Apply a configuration reload: links started, replaced and released, policies swapped
    /// (see [`Reconfigure`]). Returns once the actor has applied it (the old links' release goes
    /// on in the background).
    ///
    /// # Errors
    /// The gateway stopped.
    pub async fn reconfigure(&self, change: Reconfigure) -> Result<(), GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Reconfigure { change, reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)
    }

    /// Changes each time a binding ends (see [`Gateway::unbinds`]).
    pub fn watch_unbinds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.unbinds.subscribe()
    }

    /// The associations ended so far, by final state and reason (for `/metrics`).
    pub fn ended(&self) -> &Ended {
        &self.ended
    }

    /// The account notifier, when some tenant has a notification URL (for `/metrics`).
    pub fn notifier(&self) -> Option<&crate::notify::Notifier> {
        self.notifier.as_ref()
    }

    /// Stop the actor: it takes no more inputs, clears the proof calls of the associations in
    /// flight on their PBXs (waiting [`STOP_CLEAR_WAIT`](actor::STOP_CLEAR_WAIT) at most), ends those associations as a
    /// restart would (`gateway_restarted`, audited, committed; one whose call could not be cleared
    /// is left to the next start, which clears it), and closes the store. Returns once done.
    pub async fn stop(&self) {
        if self.tx.send(Cmd::Stop).await.is_ok() {
            self.stopped.notified().await;
        }
    }

    /// An API request, answered once what it decided is committed.
    pub async fn api(&self, input: ApiInput) -> Result<ApiReply, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Api { input, reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)?
    }

    /// An IVR request, answered once what it decided is committed (an answer that waits for the
    /// PBX's report of the proof call's answer comes when the engine decides it).
    pub async fn ivr(&self, input: IvrInput) -> Result<IvrReply, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Ivr { input, reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)?
    }

    /// The IVR call ended (hang-up).
    pub async fn ivr_hangup(&self, call: String, now: Millis) {
        let _ = self.tx.send(Cmd::IvrHangup { call, now }).await;
    }

    /// `[cluster]`: this instance just took `pbx` over (its link is attached): the associations
    /// the previous owner left in flight on it, read from the store, end `gateway_restarted`
    /// and their proof calls are cleared through the new link, as a restart does for all PBXs
    /// ([`crate::association::Engine::end_orphans`]). Its bindings are read back from the store
    /// first, and the engine acts for the PBX only from then on. Returns once committed: `true`
    /// when the PBX is served from now on (`false`: the store could not be read, or the lease was
    /// lost meanwhile; requests for it are refused with 503 until an adoption succeeds).
    ///
    /// # Errors
    /// The gateway stopped.
    pub async fn adopt(&self, pbx: &str) -> Result<bool, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Adopt { pbx: pbx.to_owned(), reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)
    }

    /// A read: from the engine's memory, or the store (`Unavailable` when it cannot be read).
    pub async fn query(&self, query: Query) -> Result<QueryResult, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Query { query, reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)?
    }
}

/// The actor's state besides the engine and the store. It lives here, not in [`actor`], because
/// the link path ([`links`]) works on it too (its ports, monitors, requests in flight, parked
/// clears): both take it from their parent, so the link path needs nothing of the actor's.
struct Shell {
    gw: Gateway,
    /// The gateway's own port on each link: the engine's requests go out through it.
    ports: links::Ports,
    /// The extensions the engine monitors (through the gateway's ports).
    monitors: HashSet<(PbxId, Extension)>,
    /// Requests in flight on the ports, by tag.
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    /// ClearConnections that met a dead link, waiting for it to come back.
    parked: Vec<(PbxId, Pending)>,
    /// MakeCalls that timed out, by tag, until their late result (or their link's loss): the
    /// engine's epoch and request id when sent, and what the MakeCall was for, so that the call
    /// the late result names is cleared. Bounded (oldest tag forgotten first).
    timed_out: std::collections::BTreeMap<u64, (u64, crate::association::RequestId, links::Submitted)>,
    /// IVR requests whose answer waits for the PBX's report of the proof call's answer, by IVR
    /// call (at most one per call: a newer request of the platform replaces the older).
    waiting: HashMap<String, IvrTx>,
    /// Engine rebuilds so far: answers to requests of an earlier engine are not its own.
    epoch: u64,
}
