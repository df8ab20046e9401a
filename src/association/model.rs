//! The engine's data: its limits as constants, the [`Engine`] struct and what it holds per
//! association, per attempt and per IVR call, and the small helpers every part of it uses. The
//! files that implement the engine (`engine.rs`, `ivr.rs`, `pbx.rs`, `timers.rs`, `limits.rs`,
//! `restore.rs`) all take these from here and never from each other, so no two of them import
//! each other.

use std::collections::{BTreeSet, HashMap};

use super::*;

/// Milliseconds in an hour, for the proof-call limit.
pub(super) const HOUR: Millis = 3_600_000;
/// Per-code limit of code entries (all calls together).
pub(crate) const MAX_CODE_ENTRIES: u32 = 5;
/// Per-call limit of code entries.
pub(crate) const MAX_ENTRIES_PER_CALL: u32 = 3;
/// CSTA events about one attempt's calls beyond which the PBX is flooding us (a real proof call
/// has about ten).
pub(crate) const MAX_ATTEMPT_EVENTS: u32 = 200;
/// Steps kept in an association's history; later ones replace the last entry after a
/// "truncated" marker (the audit log keeps every step).
pub(crate) const MAX_HISTORY: usize = 64;
/// How long an ended association stays in memory (late IVR requests and API reads find it
/// there; afterwards the API reads it from the store). Memory holds the live associations and
/// those of the last few minutes, not the whole history.
pub(crate) const FORGET_AFTER: Millis = 600_000;
/// How often the memory of IVR calls, ended context ids, proof calls and owner blocks is swept
/// (while there is any): none of them is a deadline anyone waits for.
pub(super) const SWEEP_EVERY: Millis = 60_000;

/// What a CSTA request the engine issued is for: its answer is read by this, never by comparing
/// what the request said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Monitor,
    LockCall,
    ProofCall,
    Digits,
}

/// A request whose answer the engine acts on. ClearConnection and MonitorStop are not kept: their
/// answers change nothing.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) association: String,
    pub(crate) purpose: Purpose,
}

pub(crate) struct Assoc {
    pub(crate) view: AssociationView,
    pub(crate) account_name: Option<String>,
    /// Kept in memory only, never stored or logged; compared in constant time.
    pub(crate) code: String,
    pub(crate) code_entries: u32,
    pub(crate) lock_call: Option<CallId>,
    /// This attempt placed a lock call whose call id the PBX has not named (yet, or at all):
    /// until it does, no event may name the proof call, since it could be the lock call's.
    pub(crate) lock_unknown: bool,
    /// MakeCalls (lock or proof) of this association's earlier attempts that the PBX has not
    /// answered yet: until it does, no event may name the proof call, since it could be one of
    /// theirs. Bounded by the attempts of one association.
    pub(crate) earlier_make_calls: Vec<RequestId>,
    /// Calls of earlier attempts (proof and lock calls, [`ENDED_CALLS_KEPT`] at most, newest last):
    /// the PBX may report on them long after the attempt ended (a late Established, a Cleared),
    /// and such a report must never name, or end the lock of, the current attempt.
    pub(crate) ended_calls: Vec<CallId>,
    /// A MakeCall of this association was answered "link down": the PBX may have placed its
    /// call without the gateway ever learning the call's id. From then on no event names a proof
    /// call, only the proof MakeCall's own answer does (an event could be about that call).
    pub(crate) calls_unknown: bool,
    pub(crate) monitored: bool,
    /// Ringing (until the IVR answers: `no_answer`) or in the IVR (until the IVR platform's
    /// next request: `ivr_timeout`).
    pub(crate) deadline: Option<Millis>,
    /// The current attempt's proof call: its secret context id and what the IVR may know of it.
    pub(crate) attempt: Attempt,
}

/// Calls of earlier attempts an association remembers (see [`Assoc::ended_calls`]): an attempt
/// has a lock call and a proof call, so this covers the last four attempts.
pub(crate) const ENDED_CALLS_KEPT: usize = 8;

impl Assoc {
    /// Remember a call of an attempt that is over, so that the PBX's late reports about it are
    /// never taken for the current attempt's.
    pub(crate) fn call_ended(&mut self, call: CallId) {
        if !self.ended_calls.contains(&call) {
            if self.ended_calls.len() >= ENDED_CALLS_KEPT {
                self.ended_calls.remove(0);
            }
            self.ended_calls.push(call);
        }
    }
}

/// One proof call attempt. A new one (new context id) for every attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempt {
    /// This attempt's MakeCalls: only their answers are read as this attempt's lock call and
    /// proof call (an earlier attempt's late answer names an earlier call).
    pub(crate) lock_request: Option<RequestId>,
    pub(crate) proof_request: Option<RequestId>,
    /// Kept in memory only, never stored, logged or shown; `None` once the attempt is over.
    pub(crate) context: Option<String>,
    /// When the PBX reported the proof call answered at the IVR.
    pub(crate) in_ivr_at: Option<Millis>,
    /// The IVR call that claimed the attempt (the first to present its context in time).
    pub(crate) claimed_by: Option<String>,
    /// An IVR call that presented the context before the PBX reported the answer, and until when
    /// it may wait for that report.
    pub(crate) waiting: Option<(String, Millis)>,
    /// CSTA events about the attempt's call (flood guard).
    pub(crate) events: u32,
    /// Steps recorded once per attempt however often the PBX repeats the event.
    pub(crate) answered: bool,
    pub(crate) reaching_ivr: bool,
    /// [`ContextDelivery::NumberPool`]: the pool number this attempt holds until it ends.
    pub(crate) pool_number: Option<String>,
}

impl Assoc {
    /// When this association next needs the engine's attention without any input: the answer
    /// of a waiting IVR request, the code's expiry, the ring or IVR timeout. `None` once final.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        if self.view.state.is_final(self.view.retryable) {
            return None;
        }
        let waiting = self.attempt.waiting.as_ref().map(|(_, until)| *until);
        [waiting, Some(self.view.expires_at), self.deadline].into_iter().flatten().min()
    }
}

/// The association engine. See the module docs.
pub struct Engine {
    pub(crate) policies: HashMap<PbxId, Policy>,
    pub(crate) assocs: HashMap<AssociationId, Assoc>,
    /// Live (not final) associations by (pbx, extension), (tenant, account) and context id.
    pub(crate) by_ext: HashMap<(PbxId, Extension), AssociationId>,
    pub(crate) by_account: HashMap<(TenantId, AccountId), AssociationId>,
    pub(crate) by_context: HashMap<String, AssociationId>,
    /// Context ids of attempts that ended in the last [`FORGET_AFTER`], with when: a proof call
    /// that reaches the IVR after its attempt failed presents one. It is told "no longer valid",
    /// not "unknown", so the adapters do not count it as a guess (a guess hits one of these as
    /// rarely as a live one). Bounded by the proof calls of ten minutes.
    pub(crate) ended_contexts: HashMap<String, Millis>,
    pub(crate) bindings: HashMap<(PbxId, Extension), Binding>,
    pub(crate) counters: HashMap<CounterKey, u32>,
    /// Proof calls of the last hour by extension, with the account each was charged to.
    pub(crate) proof_calls: HashMap<(PbxId, Extension), Vec<ProofCall>>,
    /// Owner blocks by (tenant, account, pbx, extension).
    pub(crate) blocks: HashMap<BlockKey, OwnerBlock>,
    pub(crate) ivr_calls: HashMap<String, IvrCall>,
    /// Pool numbers held by live attempts ([`ContextDelivery::NumberPool`]), by (pbx, number):
    /// the attempts' own `pool_number`s, indexed. A number is never held twice.
    pub(crate) pool_held: HashMap<(PbxId, String), AssociationId>,
    /// When each pool number was last released: the free number released longest ago is handed
    /// out first, so a number whose call is still being cleared is reused last. Bounded by the
    /// configured pools.
    pub(crate) pool_released: HashMap<(PbxId, String), Millis>,
    /// The CSTA requests whose answers the engine awaits, by id. Only requests of associations
    /// in memory: dropped with their association, so bounded like `assocs`.
    pub(crate) pending: HashMap<RequestId, Pending>,
    pub(crate) next_request: u64,
    /// Deadlines of live associations, ordered (`armed` holds each one's entry): the timer
    /// interface reads the first without scanning the associations.
    pub(crate) timers: BTreeSet<(Millis, String)>,
    pub(crate) armed: HashMap<String, Millis>,
    /// When ended associations leave memory (their last step plus [`FORGET_AFTER`]).
    pub(crate) forget: BTreeSet<(Millis, String)>,
    /// The next sweep of the other memory (see [`SWEEP_EVERY`]).
    pub(crate) next_sweep: Millis,
    /// Associations an input changed: their deadlines are re-armed before the input returns.
    pub(crate) touched: Vec<String>,
    /// With `[cluster]`: the PBXs this instance owns, the only ones the engine acts for
    /// ([`Engine::set_served`]); `None` (one gateway alone): every PBX of `policies`.
    pub(crate) served: Option<std::collections::HashSet<PbxId>>,
}

/// How much the engine holds in memory (`/metrics`; bounded by live work, not by history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Associations in memory: live ones and those ended in the last [`FORGET_AFTER`].
    pub associations: usize,
    /// Live (not final) associations.
    pub live: usize,
    pub ivr_calls: usize,
    /// Extensions with proof calls in the last hour.
    pub proof_call_extensions: usize,
    pub bindings: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    AwaitContext { tries: u32 },
    /// Presented the context of an attempt whose proof call the PBX has not yet reported
    /// answered: the request's answer waits (see [`IvrAnswer::Wait`]).
    AwaitAnswer { association: String },
    AwaitConfirm { association: String },
    AwaitCode { association: String, tries: u32 },
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct IvrCall {
    /// The platform's first request on the call: the call started then.
    pub(crate) first: Millis,
    /// The platform's last request on the call: a call silent for [`FORGET_AFTER`]
    /// is forgotten (a live one speaks every few seconds).
    pub(crate) last: Millis,
    pub(crate) from: String,
    pub(crate) stage: Stage,
    /// The language its prompts are said in (BCP 47): see `Engine::first_language`, then the
    /// PBX's once the call presents an attempt.
    pub(crate) language: String,
}


/// Append a step, keeping at most [`MAX_HISTORY`] entries and a "truncated" marker, after which
/// the newest step replaces the last one: a PBX or IVR that repeats itself cannot grow a view.
pub(crate) fn push_history(h: &mut Vec<Step>, s: Step) {
    if h.len() < MAX_HISTORY - 1 {
        h.push(s);
    } else if h.len() == MAX_HISTORY - 1 {
        h.push(Step { at: s.at, step: "truncated".into(), detail: "later steps are in the audit log; the newest follows".into() });
        h.push(s);
    } else if let Some(last) = h.last_mut() {
        *last = s;
    }
}

pub(crate) fn visible(p: &Principal, tenant: &str) -> bool {
    match p {
        Principal::Admin => true,
        Principal::Tenant(t) => t == tenant,
    }
}

pub(crate) fn audit(v: &AssociationView, at: Millis, step: &str, result: &str) -> Action {
    Action::Store(StoreWrite::Audit(AuditRecord {
        at,
        tenant: v.tenant.clone(),
        account: v.account.clone(),
        pbx: v.pbx.clone(),
        extension: v.extension.clone(),
        association: v.id.clone(),
        step: step.to_owned(),
        result: result.to_owned(),
    }))
}
