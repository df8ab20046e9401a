//! The gateway runtime: the thin tokio shell around the association engine.
//!
//! One actor task owns the [`Engine`] and the [`Store`]. Commands (API requests, IVR requests,
//! what the PBX links report) queue to it, and it sleeps until the engine's next deadline
//! ([`Engine::poll_timeout`]) when none come; it feeds a batch of them to the engine, commits all
//! their store writes in **one** transaction (group commit: durable, and cheap under load), and
//! only then answers the callers and starts the CSTA work the engine asked for on the PBX links
//! ([`submit`]: the one place that turns an engine request into link work).
//!
//! **One ordered path per link.** The gateway holds one [`Port`] per PBX link. Every request the
//! engine asks for goes out through it, tagged; the link hands back the results, the monitored
//! extensions' events and its losses and returns on the port's one channel, in the order it
//! handled them on the wire, and one forwarding task per link passes them on to the actor's
//! queue in that order ([`Cmd::Link`]). So the engine sees a MakeCall's result before the
//! events that followed it on the wire, and after those that came before it: no spawned task
//! per step, no reordering between results and events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::association::{AccountId, AssociationId, Extension, PbxId, TenantId, Action, AdminScope, ApiInput, ApiReply, AssociationView, AuditRecord, Binding, CallId, CounterKey, CstaFailure, CstaInput, CstaRequest, CstaResultInfo, Engine, IvrAnswer, IvrInput, IvrReply, OwnerBlock, Principal, Refusal, RequestId, StoreWrite};
use crate::codec::apdu::ErrorCategory;
use crate::codec::Operation;
use crate::clock::now_ms;
use crate::link::{Delivery, Link, LinkState, Port, RequestError};
use crate::store::{AuditFilter, Store};

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
}

pub enum QueryResult {
    Association(Option<AssociationView>),
    Sizes(crate::association::Sizes),
    Bindings(Vec<Binding>),
    Audit(Vec<AuditRecord>),
    Limits { counters: Vec<(CounterKey, u32)>, blocks: Vec<OwnerBlock> },
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
    /// What a PBX link reported on the gateway's port, in the link's order.
    Link { pbx: PbxId, delivery: Delivery },
    Query { query: Query, reply: oneshot::Sender<Result<QueryResult, GatewayError>> },
    /// Stop after the batch in hand: nothing is written afterwards.
    Stop,
}

use crate::association::Millis;

/// A request of the engine as the gateway submitted it: to clear a call that a MakeCall placed
/// after the engine stopped awaiting it (its association forgotten, or the engine rebuilt since:
/// `epoch` counts rebuilds, since a rebuilt engine issues request ids anew).
#[derive(Debug, Clone)]
struct Submitted {
    pbx: PbxId,
    association: AssociationId,
    extension: Extension,
}

/// Handle to the running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    tx: mpsc::Sender<Cmd>,
    links: Arc<HashMap<String, Link>>,
    /// The gateway's own port on each link: the engine's requests go out through it.
    ports: Arc<HashMap<String, Port>>,
    notifier: Option<crate::notify::Notifier>,
    stopped: Arc<tokio::sync::Notify>,
    /// Bumped whenever a binding ends, before it is committed: event streams opened under a
    /// binding check it again and end when it is gone.
    unbinds: Arc<tokio::sync::watch::Sender<u64>>,
    /// Associations ended, counted once their end is committed (for `/metrics`).
    ended: crate::metrics::Ended,
}

/// Commands handled per store transaction at most.
const BATCH: usize = 256;
/// How long a ClearConnection that met a dead link waits for the link to come back: the PBX keeps
/// its calls when only the CTI link was lost, so a proof call must still be ended afterwards.
const CLEAR_RETRY_WINDOW: Duration = Duration::from_secs(600);
/// ClearConnection attempts at most (each after the link is up again).
const CLEAR_ATTEMPTS: usize = 5;
/// Deliveries a link may hold for the gateway: every request in flight reserves one (beyond,
/// the request fails at once as if the link were down), events take the rest. The forwarding task
/// empties it into the actor's queue as fast as they come.
const PORT_CAPACITY: usize = 65_536;
/// ClearConnections waiting for their link to come back, at most (beyond, the call is left to
/// the PBX and logged).
const MAX_PARKED_CLEARS: usize = 10_000;
/// How long a stopping gateway waits for the ClearConnections of the proof calls still up.
const STOP_CLEAR_WAIT: Duration = Duration::from_secs(3);

impl Gateway {
    /// Start the actor. `links` are the PBX links by PBX id; `store` is already opened and the
    /// engine restored from it; `restored` are the actions of [`Engine::restore`] (the ends of
    /// associations that were in flight, the calls they left up), committed and carried out first.
    pub fn start(engine: Engine, store: Box<dyn Store>, links: HashMap<String, Link>, notifier: Option<crate::notify::Notifier>, restored: Vec<Action>) -> Gateway {
        let (tx, rx) = mpsc::channel(65_536);
        let mut ports = HashMap::new();
        for (pbx, link) in &links {
            let (port, deliveries) = link.attach_with_capacity(PORT_CAPACITY);
            ports.insert(pbx.clone(), port);
            tokio::spawn(forward(PbxId::from(pbx.as_str()), deliveries, tx.clone()));
        }
        let links = Arc::new(links);
        let gw = Gateway { tx: tx.clone(), links, ports: Arc::new(ports), notifier, stopped: Arc::new(tokio::sync::Notify::new()), unbinds: Arc::new(tokio::sync::watch::Sender::new(0)), ended: crate::metrics::Ended::default() };
        let done = gw.stopped.clone();
        let me = gw.clone();
        tokio::spawn(async move {
            actor(engine, store, rx, me, restored).await;
            done.notify_one();
        });
        gw
    }

    pub fn links(&self) -> &HashMap<String, Link> {
        &self.links
    }

    /// Changes each time a binding ends (see [`Gateway::unbinds`]).
    pub fn watch_unbinds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.unbinds.subscribe()
    }

    /// The associations ended so far, by final state and reason (for `/metrics`).
    pub fn ended(&self) -> &crate::metrics::Ended {
        &self.ended
    }

    /// The account notifier, when some tenant has a notification URL (for `/metrics`).
    pub fn notifier(&self) -> Option<&crate::notify::Notifier> {
        self.notifier.as_ref()
    }

    /// Stop the actor: it takes no more inputs, clears the proof calls of the associations in
    /// flight on their PBXs (waiting [`STOP_CLEAR_WAIT`] at most), ends those associations as a
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

    /// A read: from the engine's memory, or the store (`Unavailable` when it cannot be read).
    pub async fn query(&self, query: Query) -> Result<QueryResult, GatewayError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Query { query, reply }).await.map_err(|_| GatewayError::Stopped)?;
        rx.await.map_err(|_| GatewayError::Stopped)?
    }
}

/// Passes one link's deliveries on to the actor, in the order the link made them (one awaited
/// queue: results and events of one PBX keep their wire order).
async fn forward(pbx: PbxId, mut deliveries: mpsc::Receiver<Delivery>, tx: mpsc::Sender<Cmd>) {
    while let Some(delivery) = deliveries.recv().await {
        if tx.send(Cmd::Link { pbx: pbx.clone(), delivery }).await.is_err() {
            return;
        }
    }
}

/// The actor's state besides the engine and the store.
struct Shell {
    gw: Gateway,
    /// The extensions the engine monitors (through the gateway's ports).
    monitors: HashSet<(PbxId, Extension)>,
    /// Requests in flight on the ports, by tag.
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    /// ClearConnections that met a dead link, waiting for it to come back.
    parked: Vec<(PbxId, Pending)>,
    /// IVR requests whose answer waits for the PBX's report of the proof call's answer, by IVR
    /// call (at most one per call: a newer request of the platform replaces the older).
    waiting: HashMap<String, IvrTx>,
    /// Engine rebuilds so far: answers to requests of an earlier engine are not its own.
    epoch: u64,
}

/// What a command's caller hears once the batch is committed.
enum Answer {
    Api(ApiTx, Result<ApiReply, Refusal>),
    Ivr(IvrTx, String, IvrAnswer),
    None,
}

async fn actor(mut engine: Engine, mut store: Box<dyn Store>, mut rx: mpsc::Receiver<Cmd>, gw: Gateway, restored: Vec<Action>) {
    let mut sh = Shell { gw, monitors: HashSet::new(), pending: HashMap::new(), next_tag: 0, parked: Vec::new(), waiting: HashMap::new(), epoch: 0 };
    commit_restored(store.as_mut(), &mut sh, &restored);
    let mut batch = Vec::with_capacity(BATCH);
    // The engine's memory is ahead of the store (a commit failed) until it is rebuilt from it.
    let mut stale = false;
    loop {
        batch.clear();
        // Sleep until the engine's next deadline, or until commands come.
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                false
            }
            _ = sleep => true,
        };
        if stale {
            stale = !reload(&mut engine, store.as_mut(), &mut sh);
        }
        let mut actions: Vec<Action> = Vec::new();
        let mut stop = false;
        let mut after: Vec<(Answer, std::ops::Range<usize>)> = Vec::new();
        if timed_out {
            actions.extend(engine.handle_timeout(now_ms()));
        }
        for cmd in batch.drain(..) {
            let start = actions.len();
            let answer = match cmd {
                Cmd::Api { input, reply } => {
                    let h = engine.api(input);
                    actions.extend(h.actions);
                    Answer::Api(reply, h.reply)
                }
                Cmd::Ivr { input, reply } => {
                    let call = input.call.clone();
                    let h = engine.ivr(input);
                    actions.extend(h.actions);
                    Answer::Ivr(reply, call, h.reply)
                }
                Cmd::IvrHangup { call, now } => {
                    actions.extend(engine.ivr_hangup(&call, now));
                    Answer::None
                }
                Cmd::Link { pbx, delivery } => {
                    let Some((epoch, input, made)) = delivered(&mut sh, pbx, delivery) else {
                        after.push((Answer::None, actions.len()..actions.len()));
                        continue;
                    };
                    let mine = match &input {
                        CstaInput::Done { id, .. } => epoch == sh.epoch && engine.awaits(*id),
                        _ => true,
                    };
                    if mine {
                        actions.extend(engine.csta(input));
                    } else if let (CstaInput::Done { outcome: Ok(CstaResultInfo { call: Some(call) }), .. }, Some(m)) = (&input, made) {
                        // A proof call placed for an attempt the engine no longer follows:
                        // nothing else would ever clear it.
                        let clear = Pending { epoch, id: None, work: Work::Clear { association: m.association, call: call.clone(), extension: m.extension, attempts: 1, since: std::time::Instant::now() } };
                        send(&mut sh, &m.pbx, clear);
                    }
                    Answer::None
                }
                Cmd::Stop => {
                    stop = true;
                    Answer::None
                }
                Cmd::Query { query, reply } => {
                    let _ = reply.send(answer_query(&engine, store.as_mut(), query));
                    Answer::None
                }
            };
            after.push((answer, start..actions.len()));
        }
        let writes = store_writes(&actions);
        if actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Unbind { .. }))) {
            sh.gw.unbinds.send_modify(|n| *n += 1);
        }
        // Group commit: everything this batch decided is durable before anyone hears of it.
        let mut writes = writes;
        coalesce(&mut writes);
        if let Err(e) = store.apply(&writes) {
            warn!(error = %e, "store commit failed: answering with an error, carrying out nothing");
            for (answer, _) in after {
                match answer {
                    Answer::Api(r, _) => drop(r.send(Err(GatewayError::Unavailable))),
                    Answer::Ivr(r, _, _) => drop(r.send(Err(GatewayError::Unavailable))),
                    Answer::None => {}
                }
            }
            // The engine decided what the store does not hold (an association, a binding): go
            // back to what the store holds, as a restart would, so that nothing lives in memory
            // only — a binding nobody can read back after a restart must not drive a phone now.
            stale = !reload(&mut engine, store.as_mut(), &mut sh);
            continue;
        }
        sh.gw.ended.count(&writes);
        // The timeout's actions come first, then each command's, in order.
        let first = after.first().map_or(actions.len(), |(_, r)| r.start);
        carry_out(&mut sh, &actions[..first]);
        for (answer, range) in after {
            carry_out(&mut sh, &actions[range]);
            match answer {
                Answer::Api(r, reply) => drop(r.send(reply.map_err(GatewayError::Refused))),
                Answer::Ivr(r, _, IvrAnswer::Reply(reply)) => drop(r.send(Ok(reply))),
                Answer::Ivr(r, call, IvrAnswer::Wait) => {
                    // Answered by an Action::IvrReply, at the latest at the engine's deadline.
                    sh.waiting.insert(call, r);
                }
                Answer::None => {}
            }
        }
        // Answers nobody waits for any more (the platform gave up on the request).
        if sh.waiting.len() > 1024 {
            sh.waiting.retain(|_, r| !r.is_closed());
        }
        if stop {
            if !stale {
                stop_gateway(&mut engine, store.as_mut(), &mut sh).await;
            }
            return;
        }
    }
}

/// The end of [`Gateway::stop`]: clear the proof calls still up, end their associations, commit.
async fn stop_gateway(engine: &mut Engine, store: &mut dyn Store, sh: &mut Shell) {
    let clears = engine.live_calls().into_iter().map(|(association, pbx, extension, call)| {
        let link = sh.gw.links.get(pbx.as_str()).cloned();
        async move {
            let cleared = match link {
                None => false,
                Some(link) => match tokio::time::timeout(STOP_CLEAR_WAIT, link.request(Operation::ClearConnection, crate::csta::clear_connection(&call, &extension))).await {
                    // The PBX answered: cleared, or it no longer knows the call.
                    Ok(Ok(_) | Err(RequestError::Failure(_))) => true,
                    Ok(Err(_)) | Err(_) => false,
                },
            };
            if !cleared {
                info!(%association, %pbx, %extension, "proof call not cleared at stop: the next start clears it");
            }
            (association, cleared)
        }
    });
    let left_up: Vec<AssociationId> = futures_util::future::join_all(clears).await.into_iter().filter(|(_, cleared)| !cleared).map(|(a, _)| a).collect();
    let actions = engine.shutdown(now_ms(), &left_up);
    let mut writes = store_writes(&actions);
    coalesce(&mut writes);
    if let Err(e) = store.apply(&writes) {
        warn!(error = %e, "store commit at stop failed: the next start ends the associations in flight");
        return;
    }
    carry_out(sh, &actions);
}

fn answer_query(engine: &Engine, store: &mut dyn Store, query: Query) -> Result<QueryResult, GatewayError> {
    let unavailable = |e: crate::store::StoreError| {
        warn!(error = %e, "store read failed");
        GatewayError::Unavailable
    };
    Ok(match query {
        Query::Association { principal, id } => match engine.view(&principal, &id) {
            Some(v) => QueryResult::Association(Some(v.clone())),
            None => match store.association(&id) {
                Ok(Some(v)) if principal == Principal::Admin || principal == Principal::Tenant(v.tenant.clone()) => QueryResult::Association(Some(v)),
                Ok(_) => QueryResult::Association(None),
                Err(e) => return Err(unavailable(e)),
            },
        },
        Query::Binding { pbx, extension } => QueryResult::Bindings(engine.binding(&pbx, &extension).cloned().into_iter().collect()),
        Query::BindingsOf { tenant, account } => QueryResult::Bindings(engine.bindings_of(&tenant, &account).into_iter().cloned().collect()),
        Query::Audit(f) => match store.audit(&f) {
            Ok(v) => QueryResult::Audit(v),
            Err(e) => return Err(unavailable(e)),
        },
        Query::Sizes => QueryResult::Sizes(engine.sizes()),
        Query::Limits(scope) => QueryResult::Limits { counters: engine.counters(&scope), blocks: engine.blocks(&scope, now_ms()) },
    })
}

/// Rebuild the engine from the store (after a failed commit), ending what was in flight as a
/// restart does and carrying out the ends. Until the store can be read, the engine holds nothing
/// (fails closed: no binding, no association, every request refused or retried); `false` then.
fn reload(engine: &mut Engine, store: &mut dyn Store, sh: &mut Shell) -> bool {
    // Their associations are gone from memory: stop their monitors, drop their waiting replies.
    for (pbx, extension) in std::mem::take(&mut sh.monitors) {
        if let Some(port) = sh.gw.ports.get(pbx.as_str()) {
            port.unmonitor(&extension);
        }
    }
    sh.waiting.clear();
    // Requests in flight belong to the old engine.
    sh.epoch += 1;
    let now = now_ms();
    let (snap, ok) = match store.snapshot(now) {
        Ok(s) => (s, true),
        Err(e) => {
            warn!(error = %e, "the store cannot be read either: the engine holds nothing until it can");
            (crate::association::Snapshot::default(), false)
        }
    };
    let (fresh, restored) = Engine::restore(engine.policies().clone(), snap, now);
    *engine = fresh;
    commit_restored(store, sh, &restored);
    ok
}

/// Commit the actions of [`Engine::restore`] (the ends of associations that were in flight) and
/// then carry them out (clear the calls they left up, tell the accounts); nothing if the commit
/// fails.
fn commit_restored(store: &mut dyn Store, sh: &mut Shell, restored: &[Action]) {
    let mut writes = store_writes(restored);
    coalesce(&mut writes);
    match store.apply(&writes) {
        Ok(()) => {
            sh.gw.ended.count(&writes);
            carry_out(sh, restored);
        }
        Err(e) => warn!(error = %e, "store commit of the restored state failed: carrying out nothing"),
    }
}

fn store_writes(actions: &[Action]) -> Vec<StoreWrite> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Carry out the engine's CSTA work and notifications (its store writes are committed already).
fn carry_out(sh: &mut Shell, actions: &[Action]) {
    for a in actions {
        match a {
            Action::IvrReply { call, reply } => {
                if let Some(r) = sh.waiting.remove(call) {
                    let _ = r.send(Ok(reply.clone()));
                }
            }
            Action::Csta { id, association, pbx, request } => submit(sh, *id, association, pbx, request.clone()),
            Action::Notify { tenant, account, event, association } => {
                info!(%tenant, %account, %event, %association, "notify account");
                if let Some(n) = &sh.gw.notifier {
                    n.send(crate::notify::Notification { tenant: tenant.to_string(), account: account.to_string(), event: event.clone(), association: association.to_string(), at: now_ms() });
                }
            }
            Action::Store(_) => {}
        }
    }
}

/// An association written several times in one batch needs only its last state written: drop
/// the earlier upserts (the other writes keep their order).
fn coalesce(writes: &mut Vec<StoreWrite>) {
    let mut seen = std::collections::HashSet::new();
    let mut keep = vec![true; writes.len()];
    for (i, w) in writes.iter().enumerate().rev() {
        if let StoreWrite::Association(v) = w {
            if !seen.insert(v.id.clone()) {
                keep[i] = false;
            }
        }
    }
    let mut k = keep.into_iter();
    writes.retain(|_| k.next().unwrap_or(true));
}

/// A request that got no answer in time (a stalled PBX) fails like a lost link: the PBX did not
/// refuse anything.
fn failure(e: &RequestError) -> CstaFailure {
    match e {
        RequestError::LinkDown | RequestError::Closed | RequestError::QueueFull | RequestError::Timeout => CstaFailure::LinkDown,
        RequestError::Failure(u) if u.category == ErrorCategory::StateIncompatibility => CstaFailure::Busy,
        RequestError::Failure(u) if u.category == ErrorCategory::SystemResourceAvailability && matches!(u.value, Some(2 | 3)) => CstaFailure::Busy,
        _ => CstaFailure::Rejected,
    }
}

/// A request of the engine's on a port, waiting for its [`Delivery::Completed`].
struct Pending {
    /// The engine's epoch when it was sent (see [`Submitted`]).
    epoch: u64,
    /// The engine's id; `None` for a clear of the gateway's own (a call nobody follows).
    id: Option<RequestId>,
    work: Work,
}

enum Work {
    Monitor(Extension),
    MakeCall(Submitted),
    Digits,
    /// ClearConnection, retried after the link comes back (the PBX keeps its calls when only the
    /// CTI link is lost or stalls).
    Clear { association: AssociationId, call: CallId, extension: Extension, attempts: usize, since: std::time::Instant },
}

/// The one place that turns the engine's request `id` into link work (with the [`crate::csta`]
/// builders): out through the PBX's port, tagged; its result comes back as a [`Delivery`] on the
/// port, in wire order with the events ([`delivered`]).
fn submit(sh: &mut Shell, id: RequestId, association: &AssociationId, pbx: &PbxId, request: CstaRequest) {
    let pending = |work| Pending { epoch: sh.epoch, id: Some(id), work };
    match request {
        CstaRequest::MonitorStop { extension } => {
            if sh.monitors.remove(&(pbx.clone(), extension.clone())) {
                if let Some(port) = sh.gw.ports.get(pbx.as_str()) {
                    port.unmonitor(&extension);
                }
            }
        }
        CstaRequest::MonitorStart { extension } => {
            sh.monitors.insert((pbx.clone(), extension.clone()));
            let p = pending(Work::Monitor(extension));
            send(sh, pbx, p);
        }
        CstaRequest::MakeCall { from, to } => {
            let body = crate::csta::make_call(&from, &to);
            let p = pending(Work::MakeCall(Submitted { pbx: pbx.clone(), association: association.clone(), extension: from }));
            match body {
                Ok(body) => invoke(sh, pbx, p, Operation::MakeCall, body),
                // Not a number the PBX could be asked to dial: refused without asking it.
                Err(_) => refuse(sh, pbx, p, RequestError::Encode(crate::link::EncodeProblem::DeviceNotAscii)),
            }
        }
        CstaRequest::SendDigits { call, extension, digits } => {
            if let Ok(body) = crate::csta::generate_digits(&call, &extension, &digits) {
                let p = pending(Work::Digits);
                invoke(sh, pbx, p, Operation::GenerateDigits, body);
            }
        }
        CstaRequest::ClearConnection { call, extension } => {
            let p = pending(Work::Clear { association: association.clone(), call, extension, attempts: 1, since: std::time::Instant::now() });
            send(sh, pbx, p);
        }
    }
}

/// Send a monitor start or a clear (again) on `pbx`'s port.
fn send(sh: &mut Shell, pbx: &PbxId, p: Pending) {
    match &p.work {
        Work::Monitor(extension) => {
            let tag = next_tag(sh);
            let sent = sh.gw.ports.get(pbx.as_str()).map_or(Err(RequestError::LinkDown), |port| port.monitor(tag, extension));
            sh.pending.insert(tag, p);
            if let Err(e) = sent {
                loopback(sh, pbx, Delivery::Completed { tag, result: Err(e) });
            }
        }
        Work::Clear { call, extension, .. } => {
            let body = crate::csta::clear_connection(call, extension);
            invoke(sh, pbx, p, Operation::ClearConnection, body);
        }
        Work::MakeCall(_) | Work::Digits => {}
    }
}

/// Invoke `op` on `pbx`'s port for `p`.
fn invoke(sh: &mut Shell, pbx: &PbxId, p: Pending, op: Operation, body: crate::codec::Body) {
    let tag = next_tag(sh);
    let sent = sh.gw.ports.get(pbx.as_str()).map_or(Err(RequestError::LinkDown), |port| port.request(tag, op, body));
    sh.pending.insert(tag, p);
    if let Err(e) = sent {
        loopback(sh, pbx, Delivery::Completed { tag, result: Err(e) });
    }
}

/// `p` fails at once with `e`, by the same path as an answer from the PBX.
fn refuse(sh: &mut Shell, pbx: &PbxId, p: Pending, e: RequestError) {
    let tag = next_tag(sh);
    sh.pending.insert(tag, p);
    loopback(sh, pbx, Delivery::Completed { tag, result: Err(e) });
}

fn next_tag(sh: &mut Shell) -> u64 {
    sh.next_tag = sh.next_tag.wrapping_add(1);
    sh.next_tag
}

/// A delivery the gateway makes itself (a request refused before it reached the link): queued
/// to the actor like the link's own, so that the engine hears of it after this batch.
fn loopback(sh: &Shell, pbx: &PbxId, delivery: Delivery) {
    let cmd = Cmd::Link { pbx: pbx.clone(), delivery };
    if let Err(mpsc::error::TrySendError::Full(cmd)) = sh.gw.tx.try_send(cmd) {
        let tx = sh.gw.tx.clone();
        tokio::spawn(async move { tx.send(cmd).await });
    }
}

/// What a link's delivery means to the engine: the answer to one of its requests (with the
/// epoch it was sent in, and for a MakeCall what it placed), an event of an extension it
/// monitors, or the link's loss. `None` when it means nothing to the engine (a clear of the
/// gateway's own, a retry, an event nobody follows).
fn delivered(sh: &mut Shell, pbx: PbxId, delivery: Delivery) -> Option<(u64, CstaInput, Option<Submitted>)> {
    let now = now_ms();
    let done = |result: Result<CstaResultInfo, RequestError>| result.map_err(|e| failure(&e));
    match delivery {
        Delivery::Completed { tag, result } => {
            let p = sh.pending.remove(&tag)?;
            match p.work {
                Work::Monitor(extension) => {
                    if result.is_err() {
                        sh.monitors.remove(&(pbx, extension));
                    }
                    Some((p.epoch, CstaInput::Done { id: p.id?, outcome: done(result.map(|_| CstaResultInfo::default())), now }, None))
                }
                Work::MakeCall(made) => {
                    let outcome = done(result.map(|r| CstaResultInfo { call: crate::csta::made_call(&r) }));
                    Some((p.epoch, CstaInput::Done { id: p.id?, outcome, now }, Some(made)))
                }
                Work::Digits => Some((p.epoch, CstaInput::Done { id: p.id?, outcome: done(result.map(|_| CstaResultInfo::default())), now }, None)),
                Work::Clear { association, call, extension, attempts, since } => {
                    // The PBX keeps its calls when only the CTI link is lost (or stalls): clear
                    // the call once the link is up again. After a PBX restart the call is gone
                    // and the PBX says so; that ends it too.
                    let retry = matches!(result, Err(RequestError::LinkDown | RequestError::Timeout | RequestError::QueueFull)) && attempts < CLEAR_ATTEMPTS && since.elapsed() < CLEAR_RETRY_WINDOW;
                    if retry {
                        let what = format!("{association} {pbx} {extension}");
                        let again = Pending { epoch: p.epoch, id: p.id, work: Work::Clear { association, call, extension, attempts: attempts + 1, since } };
                        let up = sh.gw.links.get(pbx.as_str()).is_some_and(|l| l.state() == LinkState::Up);
                        if up && !matches!(result, Err(RequestError::LinkDown)) {
                            send(sh, &pbx, again);
                        } else if sh.parked.len() < MAX_PARKED_CLEARS {
                            sh.parked.push((pbx, again));
                        } else {
                            warn!(clear = %what, "too many clears wait for their link: proof call left to the PBX");
                        }
                        return None;
                    }
                    if let Err(e) = &result {
                        info!(%association, %pbx, %extension, error = %e, "proof call not cleared by the gateway");
                    }
                    Some((p.epoch, CstaInput::Done { id: p.id?, outcome: done(result.map(|_| CstaResultInfo::default())), now }, None))
                }
            }
        }
        Delivery::Event { device, report } => {
            let extension = Extension::from(&*device);
            let key = (pbx, extension);
            if !sh.monitors.contains(&key) {
                return None;
            }
            let event = report.event.kind().and_then(|k| report.event.body().and_then(|b| crate::csta::call_event(k, b)))?;
            let (pbx, extension) = key;
            Some((sh.epoch, CstaInput::Event { pbx, extension, event, now }, None))
        }
        Delivery::LinkLost => Some((sh.epoch, CstaInput::LinkDown { pbx, now }, None)),
        Delivery::LinkRestored => {
            // The clears that met the dead link go out again (those past their window give up).
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut sh.parked).into_iter().partition(|(p, _)| *p == pbx);
            sh.parked = others;
            for (_, p) in mine {
                if let Work::Clear { since, .. } = &p.work
                    && since.elapsed() >= CLEAR_RETRY_WINDOW
                {
                    continue;
                }
                send(sh, &pbx, p);
            }
            None
        }
        // The PBX would not monitor the extension again after a reconnect: its attempt fails by
        // its own timeout, as before.
        Delivery::MonitorFailed { .. } => None,
    }
}
