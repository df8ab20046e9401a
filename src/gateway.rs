//! The gateway runtime: the thin tokio shell around the association engine.
//!
//! One actor task owns the [`Engine`] and the [`Store`]. Commands (API requests, IVR requests,
//! CSTA results and events, link losses, ticks) queue to it; it feeds a batch of them to the
//! engine, commits all their store writes in **one** transaction (group commit: durable, and
//! cheap under load), and only then answers the callers and starts the CSTA work the engine
//! asked for on the PBX links. CSTA results and events come back as new commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::association::{Action, AdminScope, AssociationView, AuditRecord, Binding, CallEvent, CounterKey, CstaFailure, CstaRequest, CstaResultInfo, Engine, Input, Output, OwnerBlock, Principal, StoreWrite, CLAIM_WAIT};
use crate::codec::apdu::ErrorCategory;
use crate::codec::body::{FieldName as F, Value};
use crate::codec::{Body, ConnectionId, DeviceId, EventKind, LocalDevice, Operation};
use crate::clock::now_ms;
use crate::link::{Link, LinkState, MonitorEvent, RequestError};
use crate::store::{AuditFilter, Store};

/// Reads the API needs, answered by the actor.
pub enum Query {
    Association { principal: Principal, id: String },
    Binding { pbx: String, extension: String },
    BindingsOf { tenant: String, account: String },
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
    Failed(String),
}

enum Cmd {
    Engine { input: Input, reply: Option<oneshot::Sender<Output>> },
    Query { query: Query, reply: oneshot::Sender<QueryResult> },
    /// Stop after the batch in hand: nothing is written afterwards.
    Stop,
}

/// Handle to the running gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    tx: mpsc::Sender<Cmd>,
    links: Arc<HashMap<String, Link>>,
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

impl Gateway {
    /// Start the actor. `links` are the PBX links by PBX id; `store` is already opened and the
    /// engine restored from it; `restored` are the actions of [`Engine::restore`] (the ends of
    /// associations that were in flight, the calls they left up), committed and carried out first.
    pub fn start(engine: Engine, store: Box<dyn Store>, links: HashMap<String, Link>, notifier: Option<crate::notify::Notifier>, restored: Vec<Action>) -> Gateway {
        let (tx, rx) = mpsc::channel(65_536);
        let links = Arc::new(links);
        let gw = Gateway { tx: tx.clone(), links: links.clone(), notifier, stopped: Arc::new(tokio::sync::Notify::new()), unbinds: Arc::new(tokio::sync::watch::Sender::new(0)), ended: crate::metrics::Ended::default() };
        let done = gw.stopped.clone();
        let me = gw.clone();
        tokio::spawn(async move {
            actor(engine, store, rx, me, restored).await;
            done.notify_one();
        });
        for (pbx, link) in links.iter() {
            tokio::spawn(watch_link(pbx.clone(), link.clone(), tx.clone()));
        }
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            loop {
                iv.tick().await;
                if ticker.send(Cmd::Engine { input: Input::Tick { now: now_ms() }, reply: None }).await.is_err() {
                    return;
                }
            }
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

    /// Stop the actor and wait until it has committed its last batch and closed the store.
    pub async fn stop(&self) {
        if self.tx.send(Cmd::Stop).await.is_ok() {
            self.stopped.notified().await;
        }
    }

    /// Feed one engine input and wait for its output (after its writes are committed).
    pub async fn call(&self, input: Input) -> Option<Output> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Engine { input, reply: Some(reply) }).await.ok()?;
        rx.await.ok()
    }

    pub async fn query(&self, query: Query) -> QueryResult {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Query { query, reply }).await.is_err() {
            return QueryResult::Failed("gateway stopped".into());
        }
        rx.await.unwrap_or(QueryResult::Failed("gateway stopped".into()))
    }

    fn feed(&self, input: Input) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Cmd::Engine { input, reply: None }).await;
        });
    }
}

/// Reports a link loss to the engine each time a link that was up goes down.
async fn watch_link(pbx: String, link: Link, tx: mpsc::Sender<Cmd>) {
    let mut st = link.watch_state();
    let mut was_up = false;
    loop {
        let s = st.borrow_and_update().clone();
        match s {
            LinkState::Up => was_up = true,
            LinkState::Down { .. } | LinkState::Closed if was_up => {
                was_up = false;
                if tx.send(Cmd::Engine { input: Input::LinkDown { pbx: pbx.clone(), now: now_ms() }, reply: None }).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
        if st.changed().await.is_err() {
            return;
        }
    }
}

async fn actor(mut engine: Engine, mut store: Box<dyn Store>, mut rx: mpsc::Receiver<Cmd>, gw: Gateway, restored: Vec<Action>) {
    // Running monitor subscriptions of the engine: dropping the sender stops the task, and the
    // subscription with it.
    let mut monitors: HashMap<(String, String), oneshot::Sender<()>> = HashMap::new();
    // IVR requests whose answer waits for the PBX's report of the proof call's answer, by IVR
    // call (at most one per call: a newer request of the platform replaces the older).
    let mut waiting: HashMap<String, oneshot::Sender<Output>> = HashMap::new();
    commit_restored(store.as_mut(), &gw, &mut monitors, &mut waiting, &restored);
    let mut batch = Vec::with_capacity(BATCH);
    // The engine's memory is ahead of the store (a commit failed) until it is rebuilt from it.
    let mut stale = false;
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        if stale {
            stale = !reload(&mut engine, store.as_mut(), &gw, &mut monitors, &mut waiting);
        }
        let mut writes = Vec::new();
        let mut stop = false;
        let mut after: Vec<(Option<oneshot::Sender<Output>>, Option<String>, Output)> = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Cmd::Engine { input, reply } => {
                    let ivr_call = match &input {
                        Input::Ivr { call, .. } => Some(call.clone()),
                        _ => None,
                    };
                    let out = engine.handle(input);
                    writes.extend(store_writes(&out.actions));
                    if out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Unbind { .. }))) {
                        gw.unbinds.send_modify(|n| *n += 1);
                    }
                    after.push((reply, ivr_call, out));
                }
                Cmd::Stop => stop = true,
                Cmd::Query { query, reply } => {
                    let r = match query {
                        Query::Association { principal, id } => match engine.view(&principal, &id) {
                            Some(v) => QueryResult::Association(Some(v.clone())),
                            None => match store.association(&id) {
                                Ok(Some(v)) if principal == Principal::Admin || principal == Principal::Tenant(v.tenant.clone()) => QueryResult::Association(Some(v)),
                                Ok(_) => QueryResult::Association(None),
                                Err(e) => QueryResult::Failed(e.to_string()),
                            },
                        },
                        Query::Binding { pbx, extension } => QueryResult::Bindings(engine.binding(&pbx, &extension).cloned().into_iter().collect()),
                        Query::BindingsOf { tenant, account } => QueryResult::Bindings(engine.bindings_of(&tenant, &account).into_iter().cloned().collect()),
                        Query::Audit(f) => match store.audit(&f) {
                            Ok(v) => QueryResult::Audit(v),
                            Err(e) => QueryResult::Failed(e.to_string()),
                        },
                        Query::Sizes => QueryResult::Sizes(engine.sizes()),
                        Query::Limits(scope) => QueryResult::Limits { counters: engine.counters(&scope), blocks: engine.blocks(&scope, now_ms()) },
                    };
                    let _ = reply.send(r);
                }
            }
        }
        // Group commit: everything this batch decided is durable before anyone hears of it.
        coalesce(&mut writes);
        if let Err(e) = store.apply(&writes) {
            warn!(error = %e, "store commit failed: answering with an error, carrying out nothing");
            for (reply, _, _) in after {
                if let Some(r) = reply {
                    let _ = r.send(Output { error: Some(crate::association::ApiError::Unavailable), ..Output::default() });
                }
            }
            // The engine decided what the store does not hold (an association, a binding): go
            // back to what the store holds, as a restart would, so that nothing lives in memory
            // only — a binding nobody can read back after a restart must not drive a phone now.
            stale = !reload(&mut engine, store.as_mut(), &gw, &mut monitors, &mut waiting);
            continue;
        }
        gw.ended.count(&writes);
        for (reply, ivr_call, out) in after {
            carry_out(&gw, &mut monitors, &mut waiting, &out.actions);
            match (reply, ivr_call) {
                (Some(r), Some(call)) if out.ivr_wait => {
                    waiting.insert(call, r);
                    // The engine decides at the latest when the wait is over.
                    let tx = gw.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CLAIM_WAIT + Duration::from_millis(10)).await;
                        let _ = tx.send(Cmd::Engine { input: Input::Tick { now: now_ms() }, reply: None }).await;
                    });
                }
                (Some(r), _) => {
                    let _ = r.send(out);
                }
                (None, _) => {}
            }
        }
        // Answers nobody waits for any more (the platform gave up on the request).
        if waiting.len() > 1024 {
            waiting.retain(|_, r| !r.is_closed());
        }
        if stop {
            return;
        }
    }
}

/// Rebuild the engine from the store (after a failed commit), ending what was in flight as a
/// restart does and carrying out the ends. Until the store can be read, the engine holds nothing
/// (fails closed: no binding, no association, every request refused or retried); `false` then.
fn reload(engine: &mut Engine, store: &mut dyn Store, gw: &Gateway, monitors: &mut HashMap<(String, String), oneshot::Sender<()>>, waiting: &mut HashMap<String, oneshot::Sender<Output>>) -> bool {
    // Their associations are gone from memory: stop their monitors, drop their waiting replies.
    monitors.clear();
    waiting.clear();
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
    commit_restored(store, gw, monitors, waiting, &restored);
    ok
}

/// Commit the actions of [`Engine::restore`] (the ends of associations that were in flight) and
/// then carry them out (clear the calls they left up, tell the accounts); nothing if the commit
/// fails.
fn commit_restored(store: &mut dyn Store, gw: &Gateway, monitors: &mut HashMap<(String, String), oneshot::Sender<()>>, waiting: &mut HashMap<String, oneshot::Sender<Output>>, restored: &[Action]) {
    let mut writes = store_writes(restored);
    coalesce(&mut writes);
    match store.apply(&writes) {
        Ok(()) => {
            gw.ended.count(&writes);
            carry_out(gw, monitors, waiting, restored);
        }
        Err(e) => warn!(error = %e, "store commit of the restored state failed: carrying out nothing"),
    }
}

fn store_writes(actions: &[Action]) -> Vec<crate::association::StoreWrite> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Carry out the engine's CSTA work and notifications (its store writes are committed already).
fn carry_out(gw: &Gateway, monitors: &mut HashMap<(String, String), oneshot::Sender<()>>, waiting: &mut HashMap<String, oneshot::Sender<Output>>, actions: &[Action]) {
    for a in actions {
        match a {
            Action::IvrReply { call, reply } => {
                if let Some(r) = waiting.remove(call) {
                    let _ = r.send(Output { ivr: Some(reply.clone()), ..Output::default() });
                }
            }
            Action::Csta { association, pbx, request } => run_csta(gw, monitors, association, pbx, request.clone()),
            Action::Notify { tenant, account, event, association } => {
                info!(%tenant, %account, %event, %association, "notify account");
                if let Some(n) = &gw.notifier {
                    n.send(crate::notify::Notification { tenant: tenant.clone(), account: account.clone(), event: event.clone(), association: association.clone(), at: now_ms() });
                }
            }
            Action::Store(_) => {}
        }
    }
}

/// An association written several times in one batch needs only its last state written: drop
/// the earlier upserts (the other writes keep their order).
fn coalesce(writes: &mut Vec<crate::association::StoreWrite>) {
    use crate::association::StoreWrite;
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

fn connection(call: &[u8], ext: &str) -> Value {
    Value::Connection(ConnectionId { call: Some(bytes::Bytes::copy_from_slice(call)), device: DeviceId::dialing(ext).ok().map(LocalDevice::Static) })
}

/// Reduce a CSTA event to what the engine follows.
pub fn call_event(kind: EventKind, body: &Body) -> Option<CallEvent> {
    let call = body.first_connection()?.call.as_ref()?.to_vec();
    Some(match kind {
        EventKind::ServiceInitiated => CallEvent::Initiated { call },
        EventKind::Originated => CallEvent::Originated { call },
        EventKind::Delivered | EventKind::NetworkReached => CallEvent::Delivered { call },
        EventKind::Established => CallEvent::Established { call },
        EventKind::Failed => CallEvent::Failed { call, cause: body.int(F::Cause) },
        EventKind::ConnectionCleared | EventKind::CallCleared => CallEvent::Cleared { call },
        EventKind::Diverted | EventKind::Transferred | EventKind::Conferenced => CallEvent::Diverted { call },
        _ => return None,
    })
}

fn run_csta(gw: &Gateway, monitors: &mut HashMap<(String, String), oneshot::Sender<()>>, association: &str, pbx: &str, request: CstaRequest) {
    let Some(link) = gw.links.get(pbx).cloned() else {
        gw.feed(Input::CstaDone { association: association.to_owned(), request, outcome: Err(CstaFailure::LinkDown), now: now_ms() });
        return;
    };
    let gw2 = gw.clone();
    let association = association.to_owned();
    let pbx = pbx.to_owned();
    match request.clone() {
        CstaRequest::MonitorStop { extension } => {
            monitors.remove(&(pbx, extension));
        }
        CstaRequest::MonitorStart { extension } => {
            let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
            monitors.insert((pbx.clone(), extension.clone()), stop_tx);
            tokio::spawn(async move {
                let mut m = match link.monitor(&extension).await {
                    Ok(m) => m,
                    Err(e) => {
                        gw2.feed(Input::CstaDone { association, request, outcome: Err(failure(&e)), now: now_ms() });
                        return;
                    }
                };
                gw2.feed(Input::CstaDone { association, request, outcome: Ok(CstaResultInfo::default()), now: now_ms() });
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        ev = m.next() => match ev {
                            None => return,
                            Some(MonitorEvent::Event(r)) => {
                                if let Some(e) = r.event.kind().and_then(|k| r.event.body().and_then(|b| call_event(k, b))) {
                                    // In order: one sender per subscription, awaited.
                                    if gw2.tx.send(Cmd::Engine { input: Input::CstaEvent { pbx: pbx.clone(), extension: extension.clone(), event: e, now: now_ms() }, reply: None }).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Some(_) => {}
                        }
                    }
                }
            });
        }
        CstaRequest::MakeCall { from, to } => {
            tokio::spawn(async move {
                let (Ok(a), Ok(b)) = (DeviceId::dialing(&from), DeviceId::dialing(&to)) else {
                    gw2.feed(Input::CstaDone { association, request, outcome: Err(CstaFailure::Rejected), now: now_ms() });
                    return;
                };
                let body = Body::new().with(F::CallingDevice, Value::DeviceId(a)).with(F::CalledDirectoryNumber, Value::DeviceId(b));
                let outcome = match link.request(Operation::MakeCall, body).await {
                    Ok(r) => Ok(CstaResultInfo { call: r.connection(F::CallingDevice).and_then(|c| c.call.as_ref()).map(|c| c.to_vec()) }),
                    Err(e) => Err(failure(&e)),
                };
                gw2.feed(Input::CstaDone { association, request, outcome, now: now_ms() });
            });
        }
        CstaRequest::SendDigits { call, extension, digits } => {
            tokio::spawn(async move {
                let Ok(chars) = crate::codec::ber::Ia5::try_from(digits.as_str()) else { return };
                let body = Body::new().with(F::ConnectionToSendDigits, connection(&call, &extension)).with(F::CharactersToSend, Value::Text(chars));
                let outcome = link.request(Operation::GenerateDigits, body).await.map(|_| CstaResultInfo::default()).map_err(|e| failure(&e));
                gw2.feed(Input::CstaDone { association, request, outcome, now: now_ms() });
            });
        }
        CstaRequest::ClearConnection { call, extension } => {
            tokio::spawn(async move {
                let body = Body::new().with(F::ConnectionToBeCleared, connection(&call, &extension));
                let mut outcome = link.request(Operation::ClearConnection, body.clone()).await;
                // The PBX keeps its calls when only the CTI link is lost (or stalls): clear the
                // call once the link is up again. After a PBX restart the call is gone and the
                // PBX says so; that ends it too.
                for _ in 1..CLEAR_ATTEMPTS {
                    if !matches!(outcome, Err(RequestError::LinkDown | RequestError::Timeout | RequestError::QueueFull)) {
                        break;
                    }
                    if tokio::time::timeout(CLEAR_RETRY_WINDOW, link.wait_for(|s| *s == LinkState::Up)).await.is_err() {
                        break;
                    }
                    outcome = link.request(Operation::ClearConnection, body.clone()).await;
                }
                if let Err(e) = &outcome {
                    info!(%association, %pbx, %extension, error = %e, "proof call not cleared by the gateway");
                }
                gw2.feed(Input::CstaDone { association, request, outcome: outcome.map(|_| CstaResultInfo::default()).map_err(|e| failure(&e)), now: now_ms() });
            });
        }
    }
}
