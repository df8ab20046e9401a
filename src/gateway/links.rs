//! The ordered path to the PBX links: the engine's requests go out through the gateway's
//! [`Port`](crate::link::Port) on each link, tagged ([`submit`], [`send`]); what the link hands
//! back on the port (results, events, losses and returns, in wire order) is passed on to the
//! actor's queue by one task per link ([`forward`]) and read for the engine there ([`delivered`]).
//! ClearConnections that met a dead link are parked here until the port reports it restored.
//! MakeCalls that timed out are kept (bounded) until their link is lost, so that a late result
//! ([`Delivery::LateResult`]) is read as the answer the engine no longer awaits, and its call
//! cleared.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::association::{AssociationId, CallId, CstaFailure, CstaInput, CstaRequest, CstaResultInfo, Extension, PbxId, RequestId};
use crate::codec::apdu::ErrorCategory;
use crate::codec::Operation;
use crate::clock::now_ms;
use crate::link::{Delivery, LinkState, RequestError};

use super::{Cmd, Shell};

/// How long a ClearConnection that met a dead link waits for the link to come back: the PBX keeps
/// its calls when only the CTI link was lost, so a proof call must still be ended afterwards.
const CLEAR_RETRY_WINDOW: Duration = Duration::from_secs(600);
/// ClearConnection attempts at most (each after the link is up again).
const CLEAR_ATTEMPTS: usize = 5;
/// ClearConnections waiting for their link to come back, at most (beyond, the call is left to
/// the PBX and logged).
const MAX_PARKED_CLEARS: usize = 10_000;
/// MakeCalls that timed out, kept for their late result, at most (beyond, the oldest is
/// forgotten; each link remembers [`crate::link::LATE_RESULTS_KEPT`] of its own).
const MAX_TIMED_OUT_MAKE_CALLS: usize = 10_000;

/// A request of the engine as the gateway submitted it: to clear a call that a MakeCall placed
/// after the engine stopped awaiting it (its association forgotten, or the engine rebuilt since:
/// `epoch` counts rebuilds, since a rebuilt engine issues request ids anew).
#[derive(Debug, Clone)]
pub(super) struct Submitted {
    pub(super) pbx: PbxId,
    pub(super) association: AssociationId,
    pub(super) extension: Extension,
}

/// The gateway's port on each PBX link, and which link (generation) is the PBX's current one.
#[derive(Default)]
pub(super) struct Ports {
    ports: std::collections::HashMap<String, crate::link::Port>,
    generations: std::collections::HashMap<String, u64>,
    next_generation: u64,
}

impl Ports {
    /// Attach to `link` as `pbx`'s current link: its deliveries are forwarded to the actor.
    pub(super) fn attach(&mut self, pbx: &str, link: &crate::link::Link, tx: &mpsc::Sender<Cmd>) {
        let (port, deliveries) = link.attach_with_capacity(super::PORT_CAPACITY);
        self.next_generation += 1;
        self.ports.insert(pbx.to_owned(), port);
        self.generations.insert(pbx.to_owned(), self.next_generation);
        tokio::spawn(forward(PbxId::from(pbx), self.next_generation, deliveries, tx.clone()));
    }

    /// Detach from `pbx`'s link (removed, or being replaced): requests no longer go to it.
    pub(super) fn detach(&mut self, pbx: &str) {
        self.ports.remove(pbx);
        self.generations.remove(pbx);
    }

    pub(super) fn get(&self, pbx: &str) -> Option<&crate::link::Port> {
        self.ports.get(pbx)
    }

    /// Whether deliveries of `generation` come from `pbx`'s current link.
    pub(super) fn current(&self, pbx: &str, generation: u64) -> bool {
        self.generations.get(pbx) == Some(&generation)
    }
}

/// Passes one link's deliveries on to the actor, in the order the link made them (one awaited
/// queue: results and events of one PBX keep their wire order).
async fn forward(pbx: PbxId, generation: u64, mut deliveries: mpsc::Receiver<Delivery>, tx: mpsc::Sender<Cmd>) {
    while let Some(delivery) = deliveries.recv().await {
        if tx.send(Cmd::Link { pbx: pbx.clone(), generation, delivery }).await.is_err() {
            return;
        }
    }
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
pub(super) struct Pending {
    /// The engine's epoch when it was sent (see [`Submitted`]).
    pub(super) epoch: u64,
    /// The engine's id; `None` for a clear of the gateway's own (a call nobody follows).
    pub(super) id: Option<RequestId>,
    pub(super) work: Work,
}

pub(super) enum Work {
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
pub(super) fn submit(sh: &mut Shell, id: RequestId, association: &AssociationId, pbx: &PbxId, request: CstaRequest) {
    let pending = |work| Pending { epoch: sh.epoch, id: Some(id), work };
    match request {
        CstaRequest::MonitorStop { extension } => {
            if sh.monitors.remove(&(pbx.clone(), extension.clone())) {
                if let Some(port) = sh.ports.get(pbx.as_str()) {
                    port.unmonitor(&extension);
                }
            }
        }
        CstaRequest::MonitorStart { extension } => {
            sh.monitors.insert((pbx.clone(), extension.clone()));
            let p = pending(Work::Monitor(extension.clone()));
            track(sh, pbx, p, |port, tag| port.monitor(tag, &extension));
        }
        CstaRequest::MakeCall { from, to } => {
            let body = crate::csta::make_call(&from, &to);
            let p = pending(Work::MakeCall(Submitted { pbx: pbx.clone(), association: association.clone(), extension: from }));
            match body {
                Ok(body) => track(sh, pbx, p, |port, tag| port.request(tag, Operation::MakeCall, body)),
                // Not a number the PBX could be asked to dial: refused without asking it.
                Err(_) => refuse(sh, pbx, p, RequestError::Encode(crate::link::EncodeProblem::DeviceNotAscii)),
            }
        }
        CstaRequest::SendDigits { call, extension, digits } => {
            if let Ok(body) = crate::csta::generate_digits(&call, &extension, &digits) {
                let p = pending(Work::Digits);
                track(sh, pbx, p, |port, tag| port.request(tag, Operation::GenerateDigits, body));
            }
        }
        CstaRequest::ClearConnection { call, extension } => {
            let p = pending(Work::Clear { association: association.clone(), call, extension, attempts: 1, since: std::time::Instant::now() });
            clear(sh, pbx, p);
        }
    }
}

/// Send the ClearConnection `p` stands for (again) on `pbx`'s port.
pub(super) fn clear(sh: &mut Shell, pbx: &PbxId, p: Pending) {
    let Work::Clear { call, extension, .. } = &p.work else { return };
    let body = crate::csta::clear_connection(call, extension);
    track(sh, pbx, p, |port, tag| port.request(tag, Operation::ClearConnection, body));
}

/// Tag `p`, hand it to `pbx`'s port with `send`, and keep it until its [`Delivery::Completed`]; a
/// request the port refuses at once (or a PBX without a port: link down) is answered by the same
/// path.
fn track(sh: &mut Shell, pbx: &PbxId, p: Pending, send: impl FnOnce(&crate::link::Port, u64) -> Result<(), RequestError>) {
    let tag = next_tag(sh);
    let sent = sh.ports.get(pbx.as_str()).map_or(Err(RequestError::LinkDown), |port| send(port, tag));
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
    let generation = sh.ports.generations.get(pbx.as_str()).copied().unwrap_or_default();
    let cmd = Cmd::Link { pbx: pbx.clone(), generation, delivery };
    if let Err(mpsc::error::TrySendError::Full(cmd)) = sh.gw.tx.try_send(cmd) {
        let tx = sh.gw.tx.clone();
        tokio::spawn(async move { tx.send(cmd).await });
    }
}

/// What a link's delivery means to the engine: the answer to one of its requests (with the
/// epoch it was sent in, and for a MakeCall what it placed), an event of an extension it
/// monitors, or the link's loss. `None` when it means nothing to the engine (a clear of the
/// gateway's own, a retry, an event nobody follows).
pub(super) fn delivered(sh: &mut Shell, pbx: PbxId, delivery: Delivery) -> Option<(u64, CstaInput, Option<Submitted>)> {
    let now = now_ms();
    let done = |result: Result<CstaResultInfo, RequestError>| result.map_err(|e| failure(&e));
    match delivery {
        Delivery::Completed { tag, result } => {
            let p = sh.pending.remove(&tag)?;
            match p.work {
                Work::Monitor(extension) => {
                    let key = (pbx, extension);
                    if result.is_err() {
                        sh.monitors.remove(&key);
                    } else if !sh.monitors.contains(&key) {
                        // Stopped (or the engine rebuilt) while it was starting: nobody follows
                        // the extension any more, so the PBX monitor must not stay behind.
                        if let Some(port) = sh.ports.get(key.0.as_str()) {
                            port.unmonitor(&key.1);
                        }
                    }
                    Some((p.epoch, CstaInput::Done { id: p.id?, outcome: done(result.map(|_| CstaResultInfo::default())), now }, None))
                }
                Work::MakeCall(made) => {
                    if let (Err(RequestError::Timeout), Some(id)) = (&result, p.id) {
                        // The PBX may place the call all the same: its late result must find
                        // what the MakeCall was for, to clear it.
                        sh.timed_out.insert(tag, (p.epoch, id, made.clone()));
                        while sh.timed_out.len() > MAX_TIMED_OUT_MAKE_CALLS {
                            sh.timed_out.pop_first();
                        }
                    }
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
                        let up = sh.gw.links().get(pbx.as_str()).is_some_and(|l| l.state() == LinkState::Up);
                        if up && !matches!(result, Err(RequestError::LinkDown)) {
                            clear(sh, &pbx, again);
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
        // The answer to a MakeCall that timed out (the engine heard `LinkDown` then): read like
        // any answer the engine no longer awaits, so the actor clears the call it names.
        Delivery::LateResult { tag, result } => {
            let (epoch, id, made) = sh.timed_out.remove(&tag)?;
            let call = crate::csta::made_call(&result);
            if call.is_none() {
                warn!(association = %made.association, %pbx, extension = %made.extension, "a late MakeCall result names no call: nothing to clear");
            }
            Some((epoch, CstaInput::Done { id, outcome: Ok(CstaResultInfo { call }), now }, Some(made)))
        }
        Delivery::LinkLost => {
            // Invoke ids are per connection: no late result of the lost one can come.
            sh.timed_out.retain(|_, (_, _, made)| made.pbx != pbx);
            Some((sh.epoch, CstaInput::LinkDown { pbx, now }, None))
        }
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
                clear(sh, &pbx, p);
            }
            None
        }
        // The PBX would not monitor the extension again after a reconnect: its attempt fails by
        // its own timeout, as before.
        Delivery::MonitorFailed { .. } => None,
    }
}
