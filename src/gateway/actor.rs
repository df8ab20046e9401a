//! The actor: it owns the [`Engine`] and the [`Store`], takes the queued commands in batches,
//! feeds them to the engine, commits all their store writes in one transaction (group commit),
//! and only then answers the callers and carries out the engine's actions (its CSTA work goes to
//! [`super::links`]). Also the two ways out of the loop's normal course: the stop
//! ([`super::Gateway::stop`]) and the rebuild from the store after a failed commit.
//!
//! `[cluster]`: a batch can be refused because one PBX's lease was lost between the routing of a
//! request and the commit (*fenced*: the database holds another owner's epoch). Rather than fail
//! the whole batch and rebuild the engine — which would fail every other PBX's requests and end
//! this instance's own associations in flight, for a PBX it no longer owns — the actor drops
//! that PBX from the engine without a write (its new owner ends what was in flight there),
//! answers the commands that wrote for it `NotServed` (503, retry), and commits the rest of the
//! batch again without that PBX's writes. Simpler than committing per PBX (one transaction per
//! batch in the normal case, as before), and bounded: each PBX is dropped at most once per batch.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::association::{AssociationId, Action, ApiInput, ApiReply, CallId, CstaInput, CstaRequest, CstaResultInfo, Engine, Extension, IvrAnswer, Judged, PbxId, Principal, Refusal, StoreWrite};
use crate::codec::Operation;
use crate::clock::now_ms;
use crate::link::{Delivery, Link, RequestError};
use crate::store::{AccountClaim, Store};

use super::links::{clear, delivered, submit, Pending, Work};
use super::{ApiTx, Cmd, Gateway, GatewayError, IvrTx, Query, QueryResult, Shell};

/// Commands handled per store transaction at most.
const BATCH: usize = 256;
/// How long a stopping gateway waits for the ClearConnections of the proof calls still up.
const STOP_CLEAR_WAIT: Duration = Duration::from_secs(3);

/// What a command's caller hears once the batch is committed.
enum Answer {
    Api(ApiTx, Result<ApiReply, Refusal>),
    /// Whether the PBX is served from now on.
    Adopted(tokio::sync::oneshot::Sender<bool>, bool),
    Ivr(IvrTx, String, IvrAnswer),
    None,
}

pub(super) async fn actor(mut engine: Engine, mut store: Box<dyn Store>, mut rx: mpsc::Receiver<Cmd>, gw: Gateway, ports: super::links::Ports, restored: Vec<Action>) {
    let mut sh = Shell { gw, ports, monitors: HashSet::new(), pending: HashMap::new(), next_tag: 0, parked: Vec::new(), timed_out: std::collections::BTreeMap::new(), waiting: HashMap::new(), epoch: 0 };
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
        refresh_counters(&mut engine, store.as_ref(), &batch);
        // The accounts' claims this batch took for the associations it creates.
        let mut claimed: Vec<AccountClaim> = Vec::new();
        for cmd in batch.drain(..) {
            let start = actions.len();
            let answer = match cmd {
                Cmd::Api { input, reply } => match claim_account(store.as_mut(), &input) {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Answer::None
                    }
                    Ok(claim) => {
                        let h = engine.api(input);
                        actions.extend(h.actions);
                        match (claim, &h.reply) {
                            (Some(c), Ok(_)) => claimed.push(c),
                            (Some(c), Err(_)) => release_accounts(store.as_mut(), &[c]),
                            (None, _) => {}
                        }
                        Answer::Api(reply, h.reply)
                    }
                },
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
                Cmd::CodeUndelivered { id } => {
                    actions.extend(engine.code_undelivered(&id, now_ms()));
                    Answer::None
                }
                Cmd::Link { pbx, generation, delivery } => {
                    // A link a reload replaced or removed: the answers to requests sent through
                    // it still settle those requests; its notices and events are no longer the
                    // PBX's (the engine heard of the change when it was made).
                    let answer = matches!(delivery, Delivery::Completed { .. } | Delivery::LateResult { .. });
                    let delivery = if answer || sh.ports.current(pbx.as_str(), generation) { Some(delivery) } else { None };
                    let Some((epoch, input, made)) = delivery.and_then(|d| delivered(&mut sh, pbx, d)) else {
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
                        // A proof call placed for an attempt the engine no longer follows (its
                        // result came after a cancel, a failed attempt, a request timeout or a
                        // rebuild): nothing else would ever clear it.
                        info!(association = %m.association, pbx = %m.pbx, extension = %m.extension, "clearing a proof call placed for an attempt no longer followed");
                        let stray = Pending { epoch, id: None, work: Work::Clear { association: m.association, call: call.clone(), extension: m.extension, attempts: 1, since: std::time::Instant::now() } };
                        clear(&mut sh, &m.pbx, stray);
                    }
                    Answer::None
                }
                Cmd::Reconfigure { change, reply } => {
                    actions.extend(reconfigure(&mut engine, &mut sh, change));
                    let _ = reply.send(());
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
                Cmd::Adopt { pbx, reply } => {
                    // Served only once what the previous owner did there is read back: until
                    // then requests for it are refused (503), never decided on stale memory.
                    match store.snapshot(now_ms()) {
                        Ok(snap) => {
                            let left = snap.in_flight.iter().filter(|v| v.pbx.as_str() == pbx).count();
                            info!(pbx = %pbx, associations = left, "PBX taken over: its bindings, blocks and counters read from the store; ending the associations its previous owner left in flight");
                            actions.extend(engine.adopt_pbx(&pbx, snap, now_ms()));
                            Answer::Adopted(reply, true)
                        }
                        Err(e) => {
                            warn!(pbx = %pbx, error = %e, "PBX taken over, but the store cannot be read: not served until it can");
                            Answer::Adopted(reply, false)
                        }
                    }
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
        let mut fenced: Vec<String> = Vec::new();
        let committed = loop {
            match store.apply(&writes) {
                // `[cluster]`: another instance holds this PBX's lease now (lost between the
                // routing of a request and this commit). Only that PBX's part of the batch goes:
                // the engine forgets the PBX (the new owner ends its associations), the commands
                // that wrote for it are answered "not served" (503, retry), and the rest of the
                // batch is committed again without its writes — the other PBXs' requests are
                // not failed, and the engine is not rebuilt. Bounded: each PBX is dropped once.
                Err(crate::store::StoreError::Fenced { pbx }) if engine.served().is_some() && !fenced.contains(&pbx) => {
                    warn!(pbx = %pbx, "write batch fenced for one PBX: dropping that PBX, committing the rest of the batch");
                    engine.drop_pbx(&pbx, now_ms());
                    writes.retain(|w| w.pbx() != Some(pbx.as_str()));
                    fenced.push(pbx);
                }
                r => break r,
            }
        };
        if let Err(e) = committed {
            warn!(error = %e, "store commit failed: answering with an error, carrying out nothing");
            release_accounts(store.as_mut(), &claimed);
            for (answer, _) in after {
                match answer {
                    Answer::Api(r, _) => drop(r.send(Err(GatewayError::Unavailable))),
                    Answer::Ivr(r, _, _) => drop(r.send(Err(GatewayError::Unavailable))),
                    // Dropped: the adopter hears that it did not go through.
                    Answer::Adopted(..) | Answer::None => {}
                }
            }
            // The engine decided what the store does not hold (an association, a binding): go
            // back to what the store holds, as a restart would, so that nothing lives in memory
            // only — a binding nobody can read back after a restart must not drive a phone now.
            stale = !reload(&mut engine, store.as_mut(), &mut sh);
            continue;
        }
        sh.gw.ended.count(&writes);
        // What concerns a fenced PBX is not carried out (its writes were not committed).
        let dropped = |a: &Action| match a {
            Action::Store(w) => w.pbx().is_some_and(|p| fenced.iter().any(|f| f == p)),
            Action::Csta { pbx, .. } | Action::DeliverCode { pbx, .. } => fenced.iter().any(|f| f == pbx.as_str()),
            _ => false,
        };
        let kept = |range: &[Action]| -> Vec<Action> { range.iter().filter(|a| !dropped(a)).cloned().collect() };
        // The timeout's actions come first, then each command's, in order.
        let first = after.first().map_or(actions.len(), |(_, r)| r.start);
        carry_out(&mut sh, &kept(&actions[..first]));
        for (answer, range) in after {
            let range = &actions[range];
            // A command that wrote for a fenced PBX did not go through: "not served", retry.
            if let Some(pbx) = range.iter().filter_map(|a| if let Action::Store(w) = a { w.pbx() } else { None }).find(|p| fenced.iter().any(|f| f == p)) {
                let refused = || GatewayError::Refused(Refusal::NotServed(pbx.to_owned()));
                match answer {
                    Answer::Api(r, _) => drop(r.send(Err(refused()))),
                    Answer::Ivr(r, _, _) => drop(r.send(Err(refused()))),
                    Answer::Adopted(r, _) => drop(r.send(false)),
                    Answer::None => {}
                }
                continue;
            }
            carry_out(&mut sh, &kept(range));
            match answer {
                Answer::Api(r, reply) => drop(r.send(reply.map_err(GatewayError::Refused))),
                Answer::Adopted(r, served) => drop(r.send(served)),
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

/// Apply a configuration reload ([`super::Reconfigure`]). A removed PBX's associations in flight
/// end `pbx_removed`; a replaced link's fail their attempt as on a link loss. Their calls are
/// cleared through the link that placed them (the PBX keeps its calls when the CTI link goes),
/// then that link is released (RLRQ), in the background. The new links are attached, the new
/// policies swapped in, and the API sees the new set of links. Returns the engine's actions
/// (store writes, notifications) without the clears, which are sent here.
fn reconfigure(engine: &mut Engine, sh: &mut Shell, change: super::Reconfigure) -> Vec<Action> {
    let now = now_ms();
    let mut links = (*sh.gw.links()).clone();
    let replaced: Vec<String> = change.links.iter().map(|(id, _)| id.clone()).filter(|id| links.contains_key(id)).collect();
    let mut actions = Vec::new();
    let mut retired = Vec::new();
    for (pbx, removed) in change.removed.iter().map(|p| (p, true)).chain(replaced.iter().map(|p| (p, false))) {
        let id = PbxId::from(pbx.as_str());
        let ended = if removed { engine.pbx_removed(pbx, now) } else { engine.csta(CstaInput::LinkDown { pbx: id.clone(), now }) };
        // The calls go out through the old link, below; the rest is carried out as usual.
        let mut clears: Vec<(CallId, Extension)> = Vec::new();
        for a in ended {
            match a {
                Action::Csta { request: CstaRequest::ClearConnection { call, extension }, .. } => clears.push((call, extension)),
                a => actions.push(a),
            }
        }
        sh.parked.retain(|(p, parked)| match &parked.work {
            Work::Clear { call, extension, .. } if *p == id => {
                clears.push((call.clone(), extension.clone()));
                false
            }
            _ => true,
        });
        sh.ports.detach(pbx);
        sh.monitors.retain(|(p, _)| *p != id);
        sh.timed_out.retain(|_, (_, _, made)| made.pbx != id);
        let what = if removed { "removed" } else { "restarted with new settings" };
        info!(pbx = %pbx, calls = clears.len(), "PBX link {what} by a configuration reload: releasing the old link");
        if let Some(link) = links.remove(pbx.as_str()) {
            retired.push((pbx.clone(), link, clears));
        }
    }
    engine.set_policies(change.policies);
    // `[cluster]`: a PBX removed (its lease lost, another instance owns it from now on) is no
    // longer acted for, and what the engine held of it is forgotten; one gained is served once
    // adopted ([`super::Gateway::adopt`]).
    for p in &change.removed {
        engine.stop_serving(p);
    }
    for (pbx, link) in change.links {
        sh.ports.attach(&pbx, &link, &sh.gw.tx);
        links.insert(pbx, link);
    }
    sh.gw.set_links(links);
    if !retired.is_empty() {
        tokio::spawn(retire(retired));
    }
    actions
}

/// Clear the calls of a retired link's associations through it, then release it (RLRQ), each
/// within its time limit.
async fn retire(links: Vec<(String, Link, Vec<(CallId, Extension)>)>) {
    let each = links.into_iter().map(|(pbx, link, clears)| async move {
        let calls = clears.iter().map(|(call, extension)| {
            let (link, pbx) = (&link, &pbx);
            async move {
                let cleared = tokio::time::timeout(STOP_CLEAR_WAIT, link.request(Operation::ClearConnection, crate::csta::clear_connection(call, extension))).await;
                if !matches!(cleared, Ok(Ok(_) | Err(RequestError::Failure(_)))) {
                    info!(pbx = %pbx, %extension, "proof call not cleared before the link was released: left to the PBX");
                }
            }
        });
        futures_util::future::join_all(calls).await;
        if tokio::time::timeout(super::RELEASE_TIMEOUT, link.shutdown()).await.is_err() {
            warn!(pbx = %pbx, "the PBX did not confirm the release of its old link in time");
        }
        info!(pbx = %pbx, "old PBX link released");
    });
    futures_util::future::join_all(each).await;
}

/// The end of [`Gateway::stop`]: clear the proof calls still up, end their associations, commit.
async fn stop_gateway(engine: &mut Engine, store: &mut dyn Store, sh: &mut Shell) {
    let clears = engine.live_calls().into_iter().map(|(association, pbx, extension, call)| {
        let link = sh.gw.links().get(pbx.as_str()).cloned();
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
        // With several gateways the store holds the bindings on the PBXs others own.
        Query::BindingsOf { tenant, account } => match store.bindings_of(&tenant, &account) {
            Ok(Some(v)) => QueryResult::Bindings(v),
            Ok(None) => QueryResult::Bindings(engine.bindings_of(&tenant, &account).into_iter().cloned().collect()),
            Err(e) => return Err(unavailable(e)),
        },
        Query::Audit(f) => match store.audit(&f) {
            Ok(v) => QueryResult::Audit(v),
            Err(e) => return Err(unavailable(e)),
        },
        Query::Sizes => QueryResult::Sizes(engine.sizes()),
        Query::Limits(scope) => QueryResult::Limits { counters: engine.counters(&scope), blocks: engine.blocks(&scope, now_ms()) },
        Query::Associations(f) => match store.list_associations(&f) {
            Ok(v) => QueryResult::Associations(v),
            Err(e) => return Err(unavailable(e)),
        },
        Query::PbxOf(id) => match engine.view(&Principal::Admin, &id) {
            Some(v) => QueryResult::Pbx(Some(v.pbx.clone())),
            None => match store.association(&id) {
                Ok(v) => QueryResult::Pbx(v.map(|v| v.pbx)),
                Err(e) => return Err(unavailable(e)),
            },
        },
        // A real read of the store, the cheapest there is: one row at most.
        Query::StorePing => match store.list_associations(&crate::store::AssociationFilter { limit: 1, ..Default::default() }) {
            Ok(_) => QueryResult::StoreAnswers,
            Err(e) => return Err(unavailable(e)),
        },
    })
}

/// Take the failure counts of the accounts this batch judges from the store, where other
/// gateways add to them ([`Store::account_counters`]; nothing on one process). Read before the
/// batch, when all this engine's own counts are committed. Unreadable: the engine's own stand
/// (the batch's commit then fails too).
fn refresh_counters(engine: &mut Engine, store: &dyn Store, batch: &[Cmd]) {
    let mut accounts = Vec::new();
    for cmd in batch {
        match cmd {
            Cmd::Api { input, .. } => accounts.extend(engine.accounts_judged(Judged::Api(input))),
            Cmd::Ivr { input, .. } if input.digits.is_some() => accounts.extend(engine.accounts_judged(Judged::IvrCall(&input.call))),
            Cmd::Query { query: Query::Limits(scope), .. } => accounts.extend(engine.accounts_judged(Judged::Limits(scope))),
            _ => {}
        }
    }
    if accounts.is_empty() {
        return;
    }
    accounts.sort();
    accounts.dedup();
    match store.account_counters(&accounts) {
        Ok(counts) => engine.set_counters(counts),
        Err(e) => warn!(error = %e, "the accounts' failure counters cannot be read: judging by this instance's own"),
    }
}

/// A create's claim on its account's one live association, taken before the engine decides
/// ([`Store::claim_account`]): `Ok(None)` for other requests, `Err` to answer at once (the
/// account is busy with an association of another gateway, or the store cannot be reached).
fn claim_account(store: &mut dyn Store, input: &ApiInput) -> Result<Option<AccountClaim>, GatewayError> {
    let ApiInput::Create { principal: Principal::Tenant(tenant), account, pbx, id, .. } = input else { return Ok(None) };
    let claim = AccountClaim { tenant: tenant.clone(), account: account.clone(), association: id.clone(), pbx: pbx.as_ref().map(|p| p.to_string()) };
    match store.claim_account(&claim) {
        Ok(true) => Ok(Some(claim)),
        Ok(false) => Err(GatewayError::Refused(Refusal::AccountBusy)),
        Err(e) => {
            warn!(error = %e, "the account's claim cannot be taken: refusing the create");
            Err(GatewayError::Unavailable)
        }
    }
}

/// Give claims back (their creates refused or not committed); one that cannot be frees itself
/// once its association is found never stored ([`crate::store::postgres::CLAIM_ORPHANED_AFTER`]).
fn release_accounts(store: &mut dyn Store, claims: &[AccountClaim]) {
    for c in claims {
        if let Err(e) = store.release_account(c) {
            warn!(association = %c.association, error = %e, "an account's claim not released: it frees itself when found orphaned");
        }
    }
}

/// Rebuild the engine from the store (after a failed commit), ending what was in flight as a
/// restart does and carrying out the ends. Until the store can be read, the engine holds nothing
/// (fails closed: no binding, no association, every request refused or retried); `false` then.
fn reload(engine: &mut Engine, store: &mut dyn Store, sh: &mut Shell) -> bool {
    // Their associations are gone from memory: stop their monitors, drop their waiting replies.
    for (pbx, extension) in std::mem::take(&mut sh.monitors) {
        if let Some(port) = sh.ports.get(pbx.as_str()) {
            port.unmonitor(&extension);
        }
    }
    sh.waiting.clear();
    // Requests in flight belong to the old engine.
    sh.epoch += 1;
    let now = now_ms();
    let (mut snap, ok) = match store.snapshot(now) {
        Ok(s) => (s, true),
        Err(e) => {
            warn!(error = %e, "the store cannot be read either: the engine holds nothing until it can");
            (crate::association::Snapshot::default(), false)
        }
    };
    // `[cluster]`: only this instance's PBXs' associations are its to end; the others' owners
    // are alive and go on with theirs.
    let served = engine.served().cloned();
    if let Some(served) = &served {
        snap.in_flight.retain(|v| served.contains(&v.pbx));
    }
    let (mut fresh, restored) = Engine::restore(engine.policies().clone(), snap, now);
    fresh.set_served(served);
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
                    n.send(crate::notify::Notification { tenant: tenant.to_string(), account: account.to_string(), event: event.clone(), association: association.to_string(), at: now_ms(), code: None });
                }
            }
            Action::DeliverCode { tenant, account, association, pbx, extension, code, expires_at } => {
                // The code itself is in no log line.
                info!(%tenant, %account, %association, "code sent to the tenant's notification endpoint");
                let Some(n) = &sh.gw.notifier else { continue };
                // A give-up fails the association through the actor's own queue; `try_send`:
                // the notifier must never wait on the gateway, and a full queue (65,536
                // commands) leaves the association to end at the code's expiry.
                let (tx, id) = (sh.gw.tx.clone(), association.to_string());
                let undelivered = move || {
                    if tx.try_send(Cmd::CodeUndelivered { id: id.clone() }).is_err() {
                        warn!(association = %id, "gateway busy: the association whose code was not delivered ends at its expiry");
                    }
                };
                let code = crate::notify::IssuedCode { code: code.0.clone(), pbx: pbx.to_string(), extension: extension.to_string(), expires_at: *expires_at, undelivered: Some(std::sync::Arc::new(undelivered)) };
                n.send(crate::notify::Notification { tenant: tenant.to_string(), account: account.to_string(), event: "code_issued".into(), association: association.to_string(), at: now_ms(), code: Some(code) });
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
