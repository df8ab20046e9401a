//! The `engine` target: the association engine (`cstagate::association`) driven by arbitrary
//! sequences of API, CSTA, IVR, admin and timer inputs, with gateway restarts, against a model of
//! the store, of the PBX and of the proof-of-presence rules. Included by `lib.rs` (and so by
//! `tests/hostile/fuzz_regressions.rs`).
//!
//! The input bytes are read with `arbitrary::Unstructured`: first the two PBXs' policies (two
//! bytes each; the context goes as a dial suffix, as DTMF, not at all, or as a number of the
//! PBX's two-number IVR pool), then up to [`MAX_STEPS`] steps, each a time step and one input. Every value comes
//! from a small alphabet (2 PBXs, 4 extensions, 3 accounts, 3 codes, 4 IVR call slots) so that
//! associations go live, collide and reach the IVR:
//! - `random` pools (the shell's CSPRNG digits for context ids) are mostly fresh digits, now and
//!   then led by the digits of an earlier pool (the engine must skip a context in use, or may
//!   reuse an ended one), made only of those (refused for lack of randomness if in use), too
//!   short, or mixed with non-digits;
//! - CSTA results answer requests the engine really emitted (within the link's request timeout,
//!   else as the timeout failure the shell reports); CSTA events name the calls the PBX model
//!   placed for the engine, or foreign calls; now and then a burst of up to 250 events (flood);
//! - IVR requests come on 4 call slots (a slot gets a new platform call id after a hang-up, after
//!   9 minutes of silence, or at random), from the right DID, a wrong one, an empty or anonymous
//!   number, to the IVR number of either PBX or to one of their pool numbers; their digits are a context the oracle saw leave the gateway (in a `MakeCall` dial
//!   suffix or a `SendDigits`), a made-up one, an issued code, a wrong code, keys 1, 9 and others;
//! - timeouts (`Engine::handle_timeout`, traced as `Timeout`) at arbitrary times, and right at
//!   the deadline of a waiting IVR request;
//! - the admin's `ResetCounters` and `LiftBlocks`, in extension and account scopes.
//!
//! The model:
//! - the **store** applies every `Action::Store` in order (associations by id, bindings,
//!   counters, proof calls, owner blocks), exactly what the SQLite store holds; a "gateway
//!   restart" rebuilds the engine with `Engine::restore` from it;
//! - the **PBX** gives each MakeCall the engine emits a call id; a call *exists* once the PBX
//!   answered that MakeCall with a result naming it; it is *down* once the PBX reported it
//!   cleared, the engine asked for a ClearConnection of it, the shell cleared it (a MakeCall result
//!   for a request the engine no longer awaits, as the gateway does), or its association was
//!   bound (the IVR hangs up). A lost link and a restart do not end calls. Lock-prefix calls are left out;
//! - the **attempts**: each `ProofCall` write starts a new attempt of the association the Create
//!   or Complete named; the model predicts its context id (the first full chunk of the pool fed
//!   with that input not held by a live attempt) and checks it against what leaves in the
//!   MakeCall / SendDigits; it records when the PBX reported the attempt's call answered
//!   (Established), which IVR calls presented the attempt (its context id, or for
//!   `context_delivery = none` the extension's DID as calling number, for `number_pool` the
//!   pool number it holds reached as `To`) in what order, which call waits, which claimed it; the
//!   model predicts the pool number of each attempt (the least recently released free one) and
//!   frees it when the attempt ends;
//! - the **IVR calls**: when each started (its first request), its first calling number, and
//!   what the platform was last asked for (context, confirm key, code: the prompts, which is all
//!   the platform sees).
//!
//! Invariants checked (a failed check panics with `engine invariant: <which>`):
//! 1. store consistency: the engine's bindings are the store's; every association the engine
//!    knows reads exactly as the store last wrote it; a `Bind` never lands on a bound extension,
//!    an `Unbind` only on a bound one;
//! 2. **only the proof call binds**: a `Bind` comes from an `Input::Ivr` on the IVR call that, in
//!    the model, claimed that attempt — the first call to present the attempt, whose first
//!    request came at most `CLAIM_WAIT` before and at most `ivr_claim_window` after the PBX
//!    reported the attempt's own proof call (the MakeCall of this attempt) established, with a
//!    calling number that does not contradict the DID — after the account was named and `1`
//!    pressed, with the code issued for it, before `expires_at`, with fewer than
//!    [`MAX_CODE_ENTRIES`] wrong entries, the account's counters under the lock-out limit and no
//!    owner block in force; the IVR hangs up;
//! 3. the claim rules both ways on IVR requests: a request presenting an attempt is claimed,
//!    waits or is a mismatch exactly as the model says (a mismatch fails the attempt as
//!    `ivr_call_mismatch` with a `suspected_attack` audit record and notification); the engine
//!    never names the account (`confirm_account`) to a call the model does not see claim;
//! 4. waiting requests: no `Action::IvrReply` for a call that is not waiting; a waiting call's
//!    attempt is still ringing (it was answered when the attempt moved on), and a `Timeout` at or
//!    after its deadline (`CLAIM_WAIT` after its request) answers it;
//! 5. contexts: each attempt's context id is the first free chunk of its own randomness, of the
//!    policy's length, and is never in an `AssociationView`, an audit record, a notification or
//!    an IVR prompt; the MakeCall dials it only with `dial_suffix`, SendDigits sends it only with
//!    `dtmf`; with `number_pool` the MakeCall dials the attempt's own pool number, held by no
//!    other live attempt, and a create is refused `PoolExhausted` only when every number of the
//!    PBX is held;
//! 6. limits: counters are charged only to the requesting account (value +1 on its wrong code,
//!    0 on its binding or an admin reset in scope) and an admin reset/lift leaves nothing in
//!    scope; at most `proof_calls_per_hour` proof calls per extension in any hour and
//!    ceil(half) of them per requesting account (across restarts); no proof call for a locked-out
//!    or blocked account; a Create that succeeds passed every limit (bound, blocked, locked out,
//!    rate limited); a refused Create gives no code, no proof call, no CSTA work and nothing
//!    live; an owner block comes only from a `9` on the claiming call after the account was
//!    named, and the association ends `refused_by_phone_owner`;
//! 7. at most [`MAX_CODE_ENTRIES`] wrong entries per code, and at that number the association is
//!    over; a final association never changes state, reason or retryability again, has no proof
//!    call left up and the store names no call for it; at most one live association per
//!    extension and per account; a PBX that sends more than 200 events about an attempt's call
//!    fails it as `pbx_flood`; histories hold at most 64 steps and a "truncated" marker;
//! 8. no audit record, history step, notification, IVR prompt or API view (but the creation's
//!    `code` field) contains an issued code; the engine never panics.

mod checks;
mod drive;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arbitrary::Unstructured;
use cstagate::association::harness::{handle, Input, Output};
use cstagate::association::*;

/// Per-code limit of code entries (`MAX_CODE_ENTRIES` in `src/association/engine.rs`).
pub const MAX_CODE_ENTRIES: u32 = 5;
/// Steps per input at most.
pub const MAX_STEPS: usize = 96;
const HOUR: Millis = 3_600_000;
/// A CSTA request is answered within the link's request timeout (5 s by default) or fails.
const ANSWER_WITHIN: Millis = 5_000;
/// A realistic epoch in ms (13 digits: no issued code or context can hide in a timestamp).
const T0: Millis = 1_764_000_000_000;
/// `MAX_HISTORY` of the engine: a history holds at most this many steps, and a "truncated"
/// marker before the newest (65 entries).
const MAX_HISTORY: usize = 64;
/// `MAX_ATTEMPT_EVENTS` of the engine: beyond this many events about its call an attempt fails.
const MAX_ATTEMPT_EVENTS: u32 = 200;
/// The engine forgets an IVR call silent for 10 minutes; a live platform call speaks every few
/// seconds, so a slot silent this long gets a new call id (the platform never reuses one).
const IVR_RENEW_AFTER: Millis = 540_000;

const PBXS: [&str; 2] = ["p1", "p2"];
const TENANTS: [&str; 2] = ["t1", "t2"];
/// p1 has 2001–2003, p2 has 2001 and 3001 (2001 is on both: ambiguous when both PBXs belong to
/// one tenant, and for the DID lookup).
const EXTS: [&str; 4] = ["2001", "2002", "2003", "3001"];
const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
/// The randomness the shell would draw for codes: three codes, and one too short.
const CODES: [&str; 4] = ["135791", "246802", "97053100", "12"];
const DID_PREFIX: &str = "+3314400";
const LOCK_PREFIX: &str = "*55";
const IVR_NUMBERS: [&str; 2] = ["0800100200", "0800300400"];
/// Each PBX's IVR number pool when its `context_delivery` is `number_pool`.
const POOLS: [[&str; 2]; 2] = [["0800100201", "0800100202"], ["0800300401", "0800300402"]];
/// The numbers an IVR call may reach: the IVR numbers and every pool number.
const CALLED: [&str; 6] = [IVR_NUMBERS[0], IVR_NUMBERS[1], POOLS[0][0], POOLS[0][1], POOLS[1][0], POOLS[1][1]];
const IVR_SLOTS: usize = 4;
/// A context no pool ever holds (pools are made of `7kkk` units).
const MADE_UP_CONTEXT: &str = "99999999";

fn claim_wait() -> Millis {
    CLAIM_WAIT.as_millis() as Millis
}

/// A CSTA request the engine emitted and the PBX has not answered yet.
#[derive(Debug, Clone)]
struct Pending {
    id: RequestId,
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
    /// The model's attempt number of the association when the engine asked for this call.
    attempt: u32,
    lock: bool,
    /// The PBX answered the MakeCall with a result naming this call.
    exists: bool,
    down: bool,
}

type BlockKey = (String, String, String, String);

#[derive(Debug, Default, Clone)]
struct Store {
    assocs: BTreeMap<String, AssociationView>,
    bindings: BTreeMap<(String, String), Binding>,
    counters: BTreeMap<CounterKey, u32>,
    proof_calls: Vec<ProofCall>,
    blocks: BTreeMap<BlockKey, OwnerBlock>,
}

impl Store {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            bindings: self.bindings.values().cloned().collect(),
            counters: self.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            proof_calls: self.proof_calls.clone(),
            blocks: self.blocks.values().cloned().collect(),
            in_flight: self.assocs.values().filter(|v| !is_final(v)).cloned().collect(),
        }
    }
    fn counter(&self, k: &CounterKey) -> u32 {
        self.counters.get(k).copied().unwrap_or(0)
    }
    fn blocked(&self, tenant: &str, account: &str, pbx: &str, ext: &str, now: Millis) -> bool {
        self.blocks.get(&(tenant.into(), account.into(), pbx.into(), ext.into())).is_some_and(|b| b.until > now)
    }
    /// The live association of (pbx, extension), if any.
    fn live_on(&self, pbx: &str, ext: &str) -> Option<&AssociationView> {
        self.assocs.values().find(|v| !is_final(v) && v.pbx == pbx && v.extension == ext)
    }
}

/// What the IVR platform was last asked for on a call (the prompts: all the platform sees).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// No request yet (for the current engine).
    New,
    /// `enter_context` / `unknown_context`: the next digits are a context id.
    Context,
    /// The request presented the attempt of this association and waits for the PBX's report.
    Waiting(String),
    /// `confirm_account`: the next digits are 1 or 9.
    Confirm(String),
    /// `enter_code` / `wrong_code`.
    Code(String),
    /// Hung up on, or an unknown prompt.
    Over,
}

#[derive(Debug, Clone)]
struct IvrCallModel {
    /// The first request: when the call started.
    first: Millis,
    last: Millis,
    /// The calling number of the first request (what the engine keeps).
    from: String,
    expect: Expect,
}

/// The model of an association's current attempt (a new one at each `ProofCall` write).
#[derive(Debug, Clone, Default)]
struct Attempt {
    n: u32,
    /// The context id predicted from the randomness; `None` once the attempt is over.
    ctx: Option<String>,
    /// `number_pool`: the pool number the attempt holds, predicted (the least recently released
    /// of the free ones); the proof call must dial it.
    pool: Option<String>,
    /// When the PBX reported the attempt's call established, and that call.
    established: Option<(Millis, Vec<u8>)>,
    /// IVR calls that presented the attempt, in order.
    presenters: Vec<String>,
    claimed: Option<String>,
    waiting: Option<String>,
    /// CSTA events about the attempt's call (flood guard).
    events: u32,
}

/// How a request presenting an attempt must end (the claim rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Claimed,
    Wait,
    Mismatch,
}

/// What the inputs run so far reached (`outcomes()`, see [`OUTCOME_NAMES`]).
static OUTCOMES: [std::sync::atomic::AtomicU64; 14] = [const { std::sync::atomic::AtomicU64::new(0) }; 14];
/// The meaning of each [`outcomes`] counter.
pub const OUTCOME_NAMES: [&str; 14] = [
    "associations created",
    "reaching the IVR",
    "bound",
    "ended after 5 wrong codes",
    "expired",
    "restarts",
    "claims",
    "IVR requests waiting",
    "IVR call mismatches",
    "refused by the phone's owner (9)",
    "creates refused by an owner block",
    "attempts failed by a PBX flood",
    "waiting requests answered later",
    "claims by a pool number",
];

fn count(i: usize) {
    OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// See [`OUTCOMES`].
pub fn outcomes() -> [u64; 14] {
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
    /// Context ids the oracle saw leave the gateway (MakeCall, SendDigits), oldest first.
    seen: Vec<String>,
    /// Every context id any attempt got (for the leak check).
    contexts: HashSet<String>,
    /// Contexts of live attempts -> association (the engine's `by_context`).
    ctx_live: HashMap<String, String>,
    attempts: HashMap<String, Attempt>,
    ivr: HashMap<String, IvrCallModel>,
    /// The generation of each IVR slot's current platform call id.
    slots: [u32; IVR_SLOTS],
    /// Waiting IVR calls -> (association, deadline).
    waits: HashMap<String, (String, Millis)>,
    /// `number_pool`: the numbers held by live attempts ((pbx, number) -> association), and when
    /// each number was last released (the engine hands out the least recently released).
    pool_held: HashMap<(String, String), String>,
    pool_released: HashMap<(String, String), Millis>,
    /// Pool units handed out (see [`unit`]).
    units: Vec<u16>,
    pending: Vec<Pending>,
    calls: Vec<Call>,
    /// The IVR call of the input being fed and what it was asked for before it.
    ivr_before: Option<(String, Expect)>,
    next_call: u16,
    next_id: u32,
    trace: Vec<String>,
}

fn is_final(v: &AssociationView) -> bool {
    v.state.is_final(v.retryable)
}

/// A state in which the association has a live attempt (and a context id).
fn in_attempt(s: State) -> bool {
    matches!(s, State::Monitoring | State::Locking | State::Calling | State::Ringing | State::InIvr)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The digits of an IVR request as the engine reads them.
fn entered(d: Option<&str>) -> String {
    d.map(|d| d.trim().trim_end_matches('#').trim_start_matches('*').to_owned()).unwrap_or_default()
}

/// A pool unit: 16 digits `7kkk7kkk7kkk7kkk`, so that a context of 8, 12 or 16 digits drawn
/// from it is unique to `k` and never an issued code.
fn unit(k: u16) -> String {
    format!("7{:03}", k % 1000).repeat(4)
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
        let b2: u8 = u.arbitrary()?;
        p.context_digits = [8, 12, 16][usize::from(b2 % 3)];
        // An hour's block can end within an input (time steps of an hour exist); a day's rarely.
        p.owner_block = Duration::from_secs(if b2 & 4 != 0 { 3_600 } else { 86_400 });
        p.ivr_claim_window = Duration::from_secs(if b2 & 8 != 0 { 10 } else { 30 });
        p.code_ttl = Duration::from_secs(600);
        p.ring_timeout = Duration::from_secs(45);
        p.ivr_timeout = Duration::from_secs(60);
        // A quarter of the PBXs deliver the context as the pool number dialled (bits the older
        // inputs of `tests/fuzz_regressions/engine` never set, so that they replay as before).
        if b2 & 0x30 == 0x30 {
            p.context_delivery = ContextDelivery::NumberPool;
            p.ivr_numbers = POOLS[i].iter().map(|n| (*n).to_owned()).collect();
        }
        m.insert((*pbx).to_owned(), p);
    }
    Ok(m)
}

/// Whether `s` holds one of `secrets` as a whole run of digits.
fn leaks(s: &str, secrets: &HashSet<&str>) -> bool {
    s.split(|c: char| !c.is_ascii_digit()).any(|run| !run.is_empty() && secrets.contains(run))
}

fn view_leaks(v: &AssociationView, secrets: &HashSet<&str>) -> bool {
    [v.id.as_str(), v.tenant.as_str(), v.account.as_str(), v.pbx.as_str(), v.extension.as_str()].iter().any(|s| leaks(s, secrets))
        || v.call.as_ref().is_some_and(|c| leaks(&c.to_string(), secrets))
        || v.history.iter().any(|s| leaks(&s.step, secrets) || leaks(&s.detail, secrets))
}

/// Whether an admin scope covers a counter (the model's reading of `AdminScope`).
fn scope_counter(s: &AdminScope, k: &CounterKey) -> bool {
    let (t, a, ext) = match k {
        CounterKey::Account { tenant, account } => (tenant, account, None),
        CounterKey::AccountExtension { tenant, account, pbx, extension } => (tenant, account, Some((pbx, extension))),
    };
    match s {
        AdminScope::Extension { pbx, extension } => ext == Some((pbx, extension)),
        AdminScope::Account { tenant, account } => a == account && tenant.as_ref().is_none_or(|x| x == t),
    }
}

fn scope_block(s: &AdminScope, b: &OwnerBlock) -> bool {
    match s {
        AdminScope::Extension { pbx, extension } => b.pbx == *pbx && b.extension == *extension,
        AdminScope::Account { tenant, account } => b.account == *account && tenant.as_ref().is_none_or(|x| *x == b.tenant),
    }
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
            seen: Vec::new(),
            contexts: HashSet::new(),
            ctx_live: HashMap::new(),
            attempts: HashMap::new(),
            ivr: HashMap::new(),
            slots: [0; IVR_SLOTS],
            waits: HashMap::new(),
            pool_held: HashMap::new(),
            pool_released: HashMap::new(),
            units: Vec::new(),
            pending: Vec::new(),
            calls: Vec::new(),
            ivr_before: None,
            next_call: 0,
            next_id: 0,
            trace: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let keep = if std::env::var_os("FUZZ_ENGINE_TRACE").is_some() { usize::MAX } else { 16 };
        let tail: Vec<&String> = self.trace.iter().rev().take(keep).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("engine invariant: {what}\n last inputs:\n  {}", tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "));
    }

    fn policy(&self, pbx: &str) -> &Policy {
        match self.policies.get(pbx) {
            Some(p) => p,
            None => self.fail(format!("an association on {pbx}, a PBX the gateway does not have")),
        }
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

    /// The pool number a new attempt on `pbx` gets: a free one, the least recently released
    /// first, in the pool's order on a tie (`None`: not a pool PBX, or the pool is exhausted).
    fn free_pool_number(&self, pbx: &str) -> Option<String> {
        let p = self.policies.get(pbx).filter(|p| p.context_delivery == ContextDelivery::NumberPool)?;
        let key = |n: &String| (pbx.to_owned(), n.clone());
        p.ivr_numbers.iter().filter(|n| !self.pool_held.contains_key(&key(n))).min_by_key(|n| self.pool_released.get(&key(n)).copied().unwrap_or(0)).cloned()
    }

    /// `to` reaches a number of a pool PBX: `Some(holder)`, the association whose attempt holds
    /// it if any; `None`: not a pool number.
    fn pool_holder(&self, to: &str) -> Option<Option<String>> {
        let (pbx, number) = self.policies.iter().filter(|(_, p)| p.context_delivery == ContextDelivery::NumberPool).find_map(|(pbx, p)| p.ivr_numbers.iter().find(|n| pool_number_matches(n, to)).map(|n| (pbx.clone(), n.clone())))?;
        Some(self.pool_held.get(&(pbx, number)).cloned())
    }

    fn fresh_unit(&mut self) -> String {
        let k = self.units.len() as u16 + 1;
        self.units.push(k);
        unit(k)
    }

    /// The shell's CSPRNG digits for a context id: mostly fresh, sometimes colliding.
    fn pool(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        let old = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<Option<String>> {
            if fz.units.is_empty() {
                return Ok(None);
            }
            let n = fz.units.len();
            Ok(Some(unit(fz.units[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)])))
        };
        Ok(match u.int_in_range(0..=15u8)? {
            0..=10 => format!("{}{}", self.fresh_unit(), self.fresh_unit()),
            // An earlier pool first: skipped if its context is in use, reused if not.
            11..=12 => match old(self, u)? {
                Some(o) => format!("{o}{}", self.fresh_unit()),
                None => self.fresh_unit(),
            },
            // Only an earlier pool: refused if in use.
            13 => old(self, u)?.unwrap_or_default(),
            14 => "123".to_owned(),
            _ => format!("x{}-{}", self.fresh_unit(), self.fresh_unit()),
        })
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
