//! The `engine` target: the association engine (`cstagate::association`) driven by arbitrary
//! sequences of API, CSTA, IVR and timer inputs, with gateway restarts, against a model of the
//! store and of the PBX. Included by `lib.rs` (and so by `tests/fuzz_regressions.rs`).
//!
//! The input bytes are read with `arbitrary::Unstructured`: first the two PBXs' policies, then up
//! to [`MAX_STEPS`] steps, each a time step and one input. Every value comes from a small alphabet
//! (2 PBXs, 4 extensions, 3 accounts, 3 codes, 4 context ids) so that associations actually go
//! live, collide and reach the IVR; CSTA results answer requests the engine really emitted (within
//! the link's request timeout, else as the timeout failure the shell reports); CSTA
//! events name the calls the PBX model placed for the engine, or foreign calls; IVR digits are an
//! issued code, a wrong one, a context id, the confirm key...
//!
//! The model:
//! - the **store** applies every `Action::Store` in order (associations by id, bindings,
//!   counters, proof calls), exactly what the SQLite store holds; a "gateway restart" rebuilds the
//!   engine with `Engine::restore` from it;
//! - the **PBX** gives each MakeCall the engine emits a call id; a call *exists* once the PBX
//!   answered that MakeCall with a result naming it (a MakeCall result always names the calling
//!   connection, as CSTA requires); it is *down* once the PBX reported it cleared, the engine asked
//!   for a ClearConnection of it (the shell retries it until the link is back), or its
//!   association was bound (the IVR hangs up: "the call is the PBX's to clear"). A lost link does
//!   not end calls, nor does a gateway restart (the restarted engine clears the calls the store
//!   names). A MakeCall whose result was lost (link down, restart) never names its call: the
//!   model counts such a call as never placed, since nothing can know it. Calls to the lock prefix
//!   are the PBX's own feature calls and left out.
//!
//! Invariants checked after every step (a failed check panics):
//! 1. store consistency: the engine's bindings are the store's, for every (pbx, extension) of
//!    the alphabet; every association the engine knows reads exactly as the store last wrote it;
//!    a `Bind` never lands on a bound (pbx, extension), an `Unbind` only on a bound one;
//! 2. a binding is only ever created by an IVR input on a call that confirmed that very
//!    association, whose digits (as the engine reads them: trimmed, `*` and `#` stripped) are the
//!    code issued for it, before its `expires_at`, while it was waiting for the proof call
//!    (calling, ringing or in the IVR), with fewer than [`MAX_CODE_ENTRIES`] wrong entries of
//!    that code so far and neither the extension's nor the account's failure counter at the
//!    lock-out limit; the IVR hangs up on it. So: never a code accepted after expiry, after its
//!    attempt limit, or for another context;
//! 3. at most [`MAX_CODE_ENTRIES`] wrong entries per code, and at that number the association is
//!    over (final);
//! 4. an association in a final state never changes state, reason or retryability again;
//! 5. an association in a final state has no proof call left up, and the store names no call
//!    for it;
//! 6. at most one live (not final) association per (pbx, extension) and per (tenant, account);
//!    at most `proof_calls_per_hour` proof calls per extension in any hour;
//! 7. no audit record, history step, notification, IVR prompt or API view (but the creation's
//!    `code` field) contains an issued code (as a whole run of digits);
//! 8. the engine never panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arbitrary::Unstructured;
use cstagate::association::*;

/// Per-code limit of code entries (`MAX_CODE_ENTRIES` in `src/association/engine.rs`: after the
/// fifth wrong entry of a code, the association fails for good with `attempts_exhausted`).
pub const MAX_CODE_ENTRIES: u32 = 5;
/// Steps per input at most.
pub const MAX_STEPS: usize = 96;
const HOUR: Millis = 3_600_000;
/// A CSTA request is answered within the link's request timeout (5 s by default) or fails.
const ANSWER_WITHIN: Millis = 5_000;
/// A realistic epoch in ms (13 digits: no issued code can hide in a timestamp's digits).
const T0: Millis = 1_764_000_000_000;

const PBXS: [&str; 2] = ["p1", "p2"];
const TENANTS: [&str; 2] = ["t1", "t2"];
/// p1 has 2001–2003, p2 has 2001 and 3001 (2001 is on both: ambiguous when both PBXs belong to
/// one tenant).
const EXTS: [&str; 4] = ["2001", "2002", "2003", "3001"];
const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
/// The randomness the shell would draw: three codes, and one too short.
const CODES: [&str; 4] = ["135791", "246802", "97053100", "12"];
/// Context randomness: 8-digit chunks, the engine takes the first not in use.
const CONTEXTS: [&str; 3] = ["1111222233334444", "3333444455556666", "5555666677778888"];
const DID_PREFIX: &str = "+3314400";
const LOCK_PREFIX: &str = "*55";
const IVR_NUMBERS: [&str; 2] = ["0800100200", "0800300400"];
const IVR_CALLS: [&str; 3] = ["ivr-1", "ivr-2", "ivr-3"];

/// A CSTA request the engine emitted and the PBX has not answered yet.
#[derive(Debug, Clone)]
struct Pending {
    association: String,
    pbx: String,
    request: CstaRequest,
    /// For a MakeCall: the call the PBX places for it.
    call: Option<Vec<u8>>,
    /// The link dropped since: only a failure can come back.
    link_lost: bool,
    /// When the engine asked for it: past [`ANSWER_WITHIN`], the link's request timeout has
    /// failed it (the shell reports a timeout as `link_down`).
    sent: Millis,
}

/// A call the PBX placed for a MakeCall of the engine.
#[derive(Debug, Clone)]
struct Call {
    pbx: String,
    extension: String,
    id: Vec<u8>,
    association: String,
    lock: bool,
    /// The PBX answered the MakeCall with a result naming this call.
    exists: bool,
    down: bool,
}

#[derive(Debug, Default, Clone)]
struct Store {
    assocs: BTreeMap<String, AssociationView>,
    bindings: BTreeMap<(String, String), Binding>,
    counters: BTreeMap<CounterKey, u32>,
    proof_calls: Vec<(String, String, Millis)>,
}

impl Store {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            bindings: self.bindings.values().cloned().collect(),
            counters: self.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            proof_calls: self.proof_calls.clone(),
            in_flight: self.assocs.values().filter(|v| !v.state.is_final(v.retryable)).cloned().collect(),
        }
    }
    fn counter(&self, k: &CounterKey) -> u32 {
        self.counters.get(k).copied().unwrap_or(0)
    }
}

/// What the inputs run so far reached (to see what a corpus covers; `outcomes()`): associations
/// created, reaching the IVR, bound, ended after 5 wrong codes, expired; restarts.
static OUTCOMES: [std::sync::atomic::AtomicU64; 6] = [const { std::sync::atomic::AtomicU64::new(0) }; 6];

fn count(i: usize) {
    OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// See [`OUTCOMES`].
pub fn outcomes() -> [u64; 6] {
    std::array::from_fn(|i| OUTCOMES[i].load(std::sync::atomic::Ordering::Relaxed))
}

struct Fz {
    policies: HashMap<String, Policy>,
    engine: Engine,
    now: Millis,
    store: Store,
    /// Codes issued, by association.
    codes: HashMap<String, String>,
    /// Wrong code entries, by association (the `code_entered`/`wrong_code` audit records).
    wrong: HashMap<String, u32>,
    /// Every association id created (all restarts), and those the current engine knows.
    ids: Vec<String>,
    live: HashSet<String>,
    contexts: Vec<String>,
    pending: Vec<Pending>,
    calls: Vec<Call>,
    /// IVR call -> the association it confirmed (the `confirmed` history step).
    confirmed: HashMap<String, String>,
    next_call: u16,
    next_id: u32,
    trace: Vec<String>,
}

fn is_final(v: &AssociationView) -> bool {
    v.state.is_final(v.retryable)
}

fn policies(u: &mut Unstructured<'_>) -> arbitrary::Result<HashMap<String, Policy>> {
    let p2_tenant = if u.ratio(1, 4)? { TENANTS[0] } else { TENANTS[1] };
    let mut m = HashMap::new();
    for (i, pbx) in PBXS.iter().enumerate() {
        let tenant = if i == 0 { TENANTS[0] } else { p2_tenant };
        let mut p = Policy::new(tenant, IVR_NUMBERS[i]);
        let exts: &[&str] = if i == 0 { &EXTS[..3] } else { &["2001", "3001"] };
        for (k, e) in exts.iter().enumerate() {
            p.directory.insert((*e).to_owned(), (k % 2 == 0).then(|| format!("User {e}")));
        }
        let b: u8 = u.arbitrary()?;
        p.lock_prefix = (b & 1 != 0).then(|| LOCK_PREFIX.to_owned());
        p.require_completion = b & 2 != 0;
        p.context_delivery = match (b >> 2) % 3 {
            0 => ContextDelivery::DialSuffix,
            1 => ContextDelivery::Dtmf,
            _ => ContextDelivery::None,
        };
        p.did_prefix = (b & 0x10 != 0).then(|| DID_PREFIX.to_owned());
        p.proof_calls_per_hour = 1 + usize::from((b >> 5) % 3);
        p.lockout_after = if b & 0x80 != 0 { 4 } else { 100 };
        p.code_ttl = Duration::from_secs(600);
        p.ring_timeout = Duration::from_secs(45);
        p.ivr_timeout = Duration::from_secs(60);
        m.insert((*pbx).to_owned(), p);
    }
    Ok(m)
}

/// Whether `s` holds one of `codes` as a whole run of digits.
fn leaks(s: &str, codes: &HashSet<&str>) -> bool {
    s.split(|c: char| !c.is_ascii_digit()).any(|run| !run.is_empty() && codes.contains(run))
}

impl Fz {
    fn new(policies: HashMap<String, Policy>) -> Fz {
        Fz {
            engine: Engine::new(policies.clone()),
            policies,
            now: T0,
            store: Store::default(),
            codes: HashMap::new(),
            wrong: HashMap::new(),
            ids: Vec::new(),
            live: HashSet::new(),
            contexts: Vec::new(),
            pending: Vec::new(),
            calls: Vec::new(),
            confirmed: HashMap::new(),
            next_call: 0,
            next_id: 0,
            trace: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("engine invariant: {what}\n last inputs:\n  {}", tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "));
    }

    fn principal(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<Principal> {
        Ok(match u.int_in_range(0..=7u8)? {
            0 => Principal::Admin,
            1..=2 => Principal::Tenant(TENANTS[1].into()),
            _ => Principal::Tenant(TENANTS[0].into()),
        })
    }

    fn some_id(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        if self.ids.is_empty() || u.ratio(1, 16)? {
            return Ok("nope".into());
        }
        // Mostly the latest ones.
        let n = self.ids.len();
        let back = usize::from(u.int_in_range(0..=3u8)?).min(n - 1);
        Ok(self.ids[n - 1 - back].clone())
    }

    fn time_step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        let dt: Millis = match u.int_in_range(0..=15u8)? {
            0..=5 => 0,
            6..=10 => u.int_in_range(1..=3_000)?,
            11..=12 => u.int_in_range(3_000..=50_000)?,
            13 => *u.choose(&[46_000, 61_000])?, // past the ring timeout, the IVR timeout
            14 => u.int_in_range(590_000..=610_000)?, // around the code TTL
            _ => HOUR + 1,
        };
        self.now += dt;
        Ok(())
    }

    /// One step: an input built from `u`, fed to the engine, then every check.
    fn step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        self.time_step(u)?;
        let now = self.now;
        let input = match u.int_in_range(0..=31u8)? {
            0..=2 => {
                let principal = if u.ratio(1, 12)? { Principal::Admin } else { self.principal(u)? };
                let account = if u.ratio(1, 32)? { String::new() } else { (*u.choose(&ACCOUNTS)?).to_owned() };
                let pbx = match u.int_in_range(0..=7u8)? {
                    0 => Some(PBXS[0].to_owned()),
                    1 => Some(PBXS[1].to_owned()),
                    2 => Some("px".to_owned()),
                    _ => None,
                };
                let extension = if u.ratio(1, 32)? { "9999".to_owned() } else { (*u.choose(&EXTS)?).to_owned() };
                // Now and then the id of a live association (the shell draws ids at random: the id
                // of an association of a run before a restart, or of one the engine forgot 10
                // minutes after it ended, never comes back).
                let mut held: Vec<&String> = self.live.iter().filter(|id| self.store.assocs.get(*id).is_some_and(|v| !is_final(v))).collect();
                held.sort();
                let id = if !held.is_empty() && u.ratio(1, 32)? { (*u.choose(&held)?).clone() } else { format!("as{}", self.next_id) };
                self.next_id += 1;
                let code = (*u.choose(&CODES)?).to_owned();
                let context_id = (*u.choose(&CONTEXTS)?).to_owned();
                Input::Create { principal, account_name: u.arbitrary::<bool>()?.then(|| format!("Name of {account}")), account, pbx, extension, id, context_id, code, now }
            }
            3..=4 => Input::Complete { principal: self.principal(u)?, id: self.some_id(u)?, now },
            5 => Input::Cancel { principal: self.principal(u)?, id: self.some_id(u)?, now },
            6..=11 => {
                if self.pending.is_empty() {
                    Input::Tick { now }
                } else {
                    let i = u.choose_index(self.pending.len())?;
                    let p = if u.ratio(1, 16)? { self.pending[i].clone() } else { self.pending.swap_remove(i) };
                    let fail = |u: &mut Unstructured<'_>| -> arbitrary::Result<CstaFailure> { Ok(*u.choose(&[CstaFailure::LinkDown, CstaFailure::Busy, CstaFailure::Rejected])?) };
                    let outcome = if p.link_lost || now.saturating_sub(p.sent) > ANSWER_WITHIN {
                        Err(CstaFailure::LinkDown)
                    } else if u.ratio(1, 4)? {
                        Err(fail(u)?)
                    } else {
                        match &p.call {
                            Some(c) => {
                                let lock = self.calls.iter().any(|k| k.pbx == p.pbx && k.id == *c && k.lock);
                                // A lock call's result may lack the connection; a proof call's
                                // always names it.
                                let named = !lock || u.arbitrary::<bool>()?;
                                for k in self.calls.iter_mut().filter(|k| k.pbx == p.pbx && k.id == *c) {
                                    k.exists = true;
                                }
                                Ok(CstaResultInfo { call: named.then(|| c.clone()) })
                            }
                            None => Ok(CstaResultInfo::default()),
                        }
                    };
                    Input::CstaDone { association: p.association, request: p.request, outcome, now }
                }
            }
            12..=17 => {
                // On a call the PBX placed for the engine (most often), or a foreign one.
                let (pbx, extension, call) = if !self.calls.is_empty() && u.ratio(3, 4)? {
                    let n = self.calls.len();
                    let k = &self.calls[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)];
                    (k.pbx.clone(), k.extension.clone(), k.id.clone())
                } else {
                    ((*u.choose(&PBXS)?).to_owned(), (*u.choose(&EXTS)?).to_owned(), vec![0xF0 | u.int_in_range(0..=1u8)?])
                };
                let event = match u.int_in_range(0..=5u8)? {
                    0 => CallEvent::Initiated { call },
                    1 => CallEvent::Originated { call },
                    2 => CallEvent::Delivered { call },
                    3 => CallEvent::Established { call },
                    4 => CallEvent::Failed { call, cause: *u.choose(&[None, Some(3), Some(18), Some(10), Some(99)])? },
                    _ => CallEvent::Cleared { call },
                };
                Input::CstaEvent { pbx, extension, event, now }
            }
            18..=24 => {
                let call = (*u.choose(&IVR_CALLS)?).to_owned();
                let from = match u.int_in_range(0..=3u8)? {
                    0 => String::new(),
                    1 => "anonymous".to_owned(),
                    _ => format!("{DID_PREFIX}{}", u.choose(&EXTS)?),
                };
                let code = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
                    let mut v: Vec<&String> = fz.codes.values().collect();
                    v.sort();
                    Ok(if v.is_empty() { "135791".to_owned() } else { (*u.choose(&v)?).clone() })
                };
                let digits = match u.int_in_range(0..=11u8)? {
                    0 => None,
                    1..=3 => Some(code(self, u)?),
                    4 => Some(format!("{}#", code(self, u)?)),
                    5 => Some("000000".to_owned()),
                    6..=7 => Some("1".to_owned()),
                    8 => Some(String::new()),
                    9..=10 if !self.contexts.is_empty() => Some(format!("*{}#", u.choose(&self.contexts)?)),
                    9..=10 => Some("*11112222#".to_owned()),
                    _ => Some(format!("{}", u.int_in_range(0..=99u8)?)),
                };
                let to = (*u.choose(&IVR_NUMBERS)?).to_owned();
                Input::Ivr { call, from, to, digits, now }
            }
            25 => Input::IvrHangup { call: (*u.choose(&IVR_CALLS)?).to_owned(), now },
            26 => Input::LinkDown { pbx: (*u.choose(&PBXS)?).to_owned(), now },
            27 => {
                let principal = self.principal(u)?;
                let account = if u.ratio(1, 4)? { None } else { Some((*u.choose(&ACCOUNTS)?).to_owned()) };
                Input::Unbind { principal, account, pbx: (*u.choose(&PBXS)?).to_owned(), extension: (*u.choose(&EXTS)?).to_owned(), now }
            }
            28 => {
                let key = if u.arbitrary()? {
                    CounterKey::Extension { pbx: (*u.choose(&PBXS)?).to_owned(), extension: (*u.choose(&EXTS)?).to_owned() }
                } else {
                    CounterKey::Account { tenant: (*u.choose(&TENANTS)?).to_owned(), account: (*u.choose(&ACCOUNTS)?).to_owned() }
                };
                Input::ResetCounters { key, now }
            }
            29 => {
                self.restart();
                return Ok(());
            }
            _ => Input::Tick { now },
        };
        self.feed(input);
        Ok(())
    }

    /// The gateway restarts: a new engine from what the store holds.
    fn restart(&mut self) {
        self.trace.push(format!("RESTART at {}", self.now));
        count(5);
        let (engine, actions) = Engine::restore(self.policies.clone(), self.store.snapshot(), self.now);
        self.engine = engine;
        // Links restart with the gateway: no answer comes for what was in flight (the calls stay
        // up: the new engine must clear what the store names).
        self.pending.clear();
        self.confirmed.clear();
        self.live.clear();
        let pre = self.store.clone();
        self.actions(&actions, None, &pre);
        for v in self.store.assocs.values() {
            if !is_final(v) {
                self.fail(format!("association {} still {:?} after a restart", v.id, v.state));
            }
        }
        self.check();
    }

    fn feed(&mut self, input: Input) {
        self.trace.push(format!("{input:?}"));
        let pre = self.store.clone();
        match &input {
            Input::LinkDown { pbx, .. } => {
                for p in self.pending.iter_mut().filter(|p| p.pbx == *pbx) {
                    p.link_lost = true;
                }
            }
            Input::CstaEvent { pbx, event: CallEvent::Cleared { call }, .. } => {
                for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == *call) {
                    c.down = true;
                }
            }
            _ => {}
        }
        let out = self.engine.handle(input.clone());
        self.trace.push(format!("  -> {:?} code={:?} error={:?} ivr={:?}", out.actions, out.code, out.error, out.ivr));
        if let (Some(code), Some(v)) = (&out.code, &out.view) {
            if self.codes.contains_key(&v.id) || !self.live.insert(v.id.clone()) {
                self.fail(format!("a code issued twice for {}", v.id));
            }
            self.codes.insert(v.id.clone(), code.clone());
            self.ids.push(v.id.clone());
            self.contexts.push(v.context_id.clone());
        }
        self.actions(&out.actions, Some((&input, &out)), &pre);
        // Nothing the API or the IVR shows holds a code (but the creation's `code` field).
        let codes: HashSet<&str> = self.codes.values().map(String::as_str).collect();
        if let Some(v) = &out.view {
            if v.history.iter().any(|s| leaks(&s.step, &codes) || leaks(&s.detail, &codes)) {
                self.fail(format!("a view's history holds a code: {v:?}"));
            }
        }
        if let Some(r) = &out.ivr {
            if leaks(&r.say, &codes) {
                self.fail(format!("an IVR prompt holds a code: {}", r.say));
            }
        }
        self.check();
    }

    /// Apply the actions of one output to the models, checking each.
    fn actions(&mut self, actions: &[Action], cause: Option<(&Input, &Output)>, pre: &Store) {
        let codes: HashSet<String> = self.codes.values().cloned().collect();
        let codes: HashSet<&str> = codes.iter().map(String::as_str).collect();
        let mut binds = Vec::new();
        for a in actions {
            match a {
                Action::Store(StoreWrite::Association(v)) => {
                    if let Some(old) = self.store.assocs.get(&v.id) {
                        if is_final(old) && (old.state, old.reason, old.retryable) != (v.state, v.reason, v.retryable) {
                            self.fail(format!("final association {} changed from {:?}/{:?} to {:?}/{:?}", v.id, old.state, old.reason, v.state, v.reason));
                        }
                    }
                    if v.history.iter().any(|s| leaks(&s.step, &codes) || leaks(&s.detail, &codes)) {
                        self.fail(format!("a stored history holds a code: {v:?}"));
                    }
                    let old_state = self.store.assocs.get(&v.id).map(|o| o.state);
                    if old_state != Some(v.state) {
                        match v.state {
                            State::CodeIssued => count(0),
                            State::InIvr => count(1),
                            State::Bound => count(2),
                            State::Failed if v.reason == Some(Reason::AttemptsExhausted) => count(3),
                            State::Expired => count(4),
                            _ => {}
                        }
                    }
                    if v.state == State::Bound && self.store.assocs.get(&v.id).is_none_or(|o| o.state != State::Bound) {
                        // The IVR hangs up the proof call of a bound association.
                        for c in self.calls.iter_mut().filter(|c| c.association == v.id) {
                            c.down = true;
                        }
                    }
                    self.store.assocs.insert(v.id.clone(), v.clone());
                }
                Action::Store(StoreWrite::Bind(b)) => {
                    let key = (b.pbx.clone(), b.extension.clone());
                    if self.store.bindings.contains_key(&key) {
                        self.fail(format!("a second binding for {key:?}: {b:?}"));
                    }
                    self.store.bindings.insert(key, b.clone());
                    binds.push(b.clone());
                }
                Action::Store(StoreWrite::Unbind { pbx, extension }) => {
                    if self.store.bindings.remove(&(pbx.clone(), extension.clone())).is_none() {
                        self.fail(format!("unbind of {pbx}/{extension}, which is not bound"));
                    }
                }
                Action::Store(StoreWrite::Counter { key, value }) => {
                    self.store.counters.insert(key.clone(), *value);
                }
                Action::Store(StoreWrite::ProofCall { pbx, extension, at }) => {
                    self.store.proof_calls.push((pbx.clone(), extension.clone(), *at));
                    let n = self.store.proof_calls.iter().filter(|(p, e, t)| p == pbx && e == extension && at.saturating_sub(*t) < HOUR).count();
                    let limit = self.policies.get(pbx).map_or(0, |p| p.proof_calls_per_hour);
                    if n > limit {
                        self.fail(format!("{n} proof calls to {pbx}/{extension} within an hour (limit {limit})"));
                    }
                }
                Action::Store(StoreWrite::Audit(r)) => {
                    if [&r.step, &r.result, &r.association, &r.account, &r.tenant].iter().any(|s| leaks(s, &codes)) {
                        self.fail(format!("an audit record holds a code: {r:?}"));
                    }
                    if r.step == "code_entered" && r.result == "wrong_code" {
                        let n = self.wrong.entry(r.association.clone()).or_insert(0);
                        *n += 1;
                        if *n > MAX_CODE_ENTRIES {
                            let n = *n;
                            self.fail(format!("{n} wrong entries of the code of {}", r.association));
                        }
                    }
                    if r.step == "confirmed" {
                        if let Some((Input::Ivr { call, .. }, _)) = cause {
                            self.confirmed.insert(call.clone(), r.association.clone());
                        }
                    }
                }
                Action::Notify { tenant, account, event, association } => {
                    if [tenant, account, event, association].iter().any(|s| leaks(s, &codes)) {
                        self.fail(format!("a notification holds a code: {a:?}"));
                    }
                }
                Action::Csta { association, pbx, request } => {
                    let mut call = None;
                    match request {
                        CstaRequest::MakeCall { from, to } => {
                            self.next_call += 1;
                            let id = vec![0xC0, (self.next_call >> 8) as u8, self.next_call as u8];
                            self.calls.push(Call { pbx: pbx.clone(), extension: from.clone(), id: id.clone(), association: association.clone(), lock: to == LOCK_PREFIX, exists: false, down: false });
                            call = Some(id);
                        }
                        CstaRequest::ClearConnection { call, .. } => {
                            for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == *call) {
                                c.down = true;
                            }
                        }
                        _ => {}
                    }
                    self.pending.push(Pending { association: association.clone(), pbx: pbx.clone(), request: request.clone(), call, link_lost: false, sent: self.now });
                }
            }
        }
        for b in binds {
            self.check_bind(&b, actions, cause, pre);
        }
    }

    /// Invariant 2: how a binding may come about.
    fn check_bind(&self, b: &Binding, actions: &[Action], cause: Option<(&Input, &Output)>, pre: &Store) {
        let Some((Input::Ivr { call, digits, now, .. }, out)) = cause else {
            self.fail(format!("a binding made by something other than an IVR input: {b:?}"));
        };
        let bound: Vec<&AssociationView> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Store(StoreWrite::Association(v)) if v.state == State::Bound && v.pbx == b.pbx && v.extension == b.extension => Some(v),
                _ => None,
            })
            .collect();
        let [v] = bound.as_slice() else {
            self.fail(format!("binding {b:?} without exactly one association bound with it ({} found)", bound.len()));
        };
        let id = &v.id;
        let Some(before) = pre.assocs.get(id) else { self.fail(format!("binding for association {id} the store never held")) };
        if (b.tenant.as_str(), b.account.as_str(), b.bound_at) != (v.tenant.as_str(), v.account.as_str(), *now) {
            self.fail(format!("binding {b:?} does not match its association {v:?}"));
        }
        if !matches!(before.state, State::Calling | State::Ringing | State::InIvr) {
            self.fail(format!("association {id} bound from state {:?}", before.state));
        }
        if self.confirmed.get(call) != Some(id) {
            self.fail(format!("IVR call {call} bound association {id} but confirmed {:?}", self.confirmed.get(call)));
        }
        let entered = digits.as_deref().map(|d| d.trim().trim_end_matches('#').trim_start_matches('*'));
        let Some(code) = self.codes.get(id) else { self.fail(format!("association {id} bound but no code was issued for it")) };
        if entered != Some(code.as_str()) {
            self.fail(format!("association {id} bound with digits {digits:?}, not its code"));
        }
        if *now >= before.expires_at {
            self.fail(format!("association {id} bound at {now}, its code expired at {}", before.expires_at));
        }
        let wrong = self.wrong.get(id).copied().unwrap_or(0);
        if wrong >= MAX_CODE_ENTRIES {
            self.fail(format!("association {id} bound after {wrong} wrong entries of its code"));
        }
        let limit = self.policies.get(&b.pbx).map_or(0, |p| p.lockout_after);
        let ext_key = CounterKey::Extension { pbx: b.pbx.clone(), extension: b.extension.clone() };
        let acc_key = CounterKey::Account { tenant: b.tenant.clone(), account: b.account.clone() };
        if pre.counter(&ext_key) >= limit || pre.counter(&acc_key) >= limit {
            self.fail(format!("association {id} bound while locked out"));
        }
        if !out.ivr.as_ref().is_some_and(|r| r.hangup) {
            self.fail(format!("association {id} bound but the IVR does not hang up"));
        }
    }

    /// The invariants on the whole state, after every step.
    fn check(&self) {
        for pbx in PBXS {
            for ext in EXTS {
                let key = (pbx.to_owned(), ext.to_owned());
                if self.engine.binding(pbx, ext) != self.store.bindings.get(&key) {
                    self.fail(format!("binding of {pbx}/{ext}: engine {:?}, store {:?}", self.engine.binding(pbx, ext), self.store.bindings.get(&key)));
                }
            }
        }
        for id in &self.live {
            let e = self.engine.view(&Principal::Admin, id);
            // An association ended 10 minutes ago may have left memory (the API then reads the
            // store); until then the engine shows exactly what the store holds.
            let forgotten = e.is_none() && self.store.assocs.get(id).is_some_and(|v| is_final(v) && v.history.last().is_some_and(|s| self.now.saturating_sub(s.at) >= 600_000));
            if e != self.store.assocs.get(id) && !forgotten {
                self.fail(format!("association {id}: the engine shows {e:?}, the store holds {:?}", self.store.assocs.get(id)));
            }
        }
        let mut by_ext = HashSet::new();
        let mut by_account = HashSet::new();
        for v in self.store.assocs.values() {
            if self.wrong.get(&v.id).copied().unwrap_or(0) >= MAX_CODE_ENTRIES && !is_final(v) {
                self.fail(format!("association {} still {:?} after {MAX_CODE_ENTRIES} wrong entries of its code", v.id, v.state));
            }
            if is_final(v) {
                if v.call.is_some() {
                    self.fail(format!("final association {} still names a call in the store: {:?}", v.id, v.call));
                }
                continue;
            }
            if !by_ext.insert((&v.pbx, &v.extension)) {
                self.fail(format!("two live associations for {}/{}", v.pbx, v.extension));
            }
            if !by_account.insert((&v.tenant, &v.account)) {
                self.fail(format!("two live associations for account {}/{}", v.tenant, v.account));
            }
        }
        for c in &self.calls {
            if c.lock || !c.exists || c.down {
                continue;
            }
            if let Some(v) = self.store.assocs.get(&c.association) {
                if is_final(v) {
                    self.fail(format!("association {} is {:?} ({:?}) but its proof call {:02x?} on {}/{} is still up", v.id, v.state, v.reason, c.id, c.pbx, c.extension));
                }
            }
        }
    }
}

/// The `engine` target (see the module docs).
pub fn engine(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(p) = policies(&mut u) else { return };
    let mut fz = Fz::new(p);
    for _ in 0..MAX_STEPS {
        if u.is_empty() || fz.step(&mut u).is_err() {
            break;
        }
    }
    // `FUZZ_ENGINE_TRACE=1`: print the inputs and outputs (to see what a seed or a corpus entry
    // reaches).
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *TRACE.get_or_init(|| std::env::var_os("FUZZ_ENGINE_TRACE").is_some()) {
        eprintln!("{}\nstore: {:#?}", fz.trace.join("\n"), fz.store.assocs.values().map(|v| (&v.id, v.state, v.reason)).collect::<Vec<_>>());
    }
}
