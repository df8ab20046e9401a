//! The `engine` target: the association engine (`cstagate::association`) driven by arbitrary
//! sequences of API, CSTA, IVR, admin and timer inputs, with gateway restarts, against a model of
//! the store, of the PBX and of the proof-of-presence rules. Included by `lib.rs` (and so by
//! `tests/hostile/fuzz_regressions.rs`).
//!
//! The input bytes are read with `arbitrary::Unstructured`: first the two PBXs' policies (two
//! bytes each), then up to [`MAX_STEPS`] steps, each a time step and one input. Every value comes
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
//!   number; their digits are a context the oracle saw leave the gateway (in a `MakeCall` dial
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
//!   cleared, the engine asked for a ClearConnection of it, or its association was bound (the IVR
//!   hangs up). A lost link and a restart do not end calls. Lock-prefix calls are left out;
//! - the **attempts**: each `ProofCall` write starts a new attempt of the association the Create
//!   or Complete named; the model predicts its context id (the first full chunk of the pool fed
//!   with that input not held by a live attempt) and checks it against what leaves in the
//!   MakeCall / SendDigits; it records when the PBX reported the attempt's call answered
//!   (Established), which IVR calls presented the attempt (its context id, or for
//!   `context_delivery = none` the extension's DID as calling number) in what order, which call
//!   waits, which claimed it;
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
//!    `dtmf`;
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
static OUTCOMES: [std::sync::atomic::AtomicU64; 13] = [const { std::sync::atomic::AtomicU64::new(0) }; 13];
/// The meaning of each [`outcomes`] counter.
pub const OUTCOME_NAMES: [&str; 13] = [
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
];

fn count(i: usize) {
    OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// See [`OUTCOMES`].
pub fn outcomes() -> [u64; 13] {
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
        let tail: Vec<&String> = self.trace.iter().rev().take(16).collect::<Vec<_>>().into_iter().rev().collect();
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

    fn time_step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        let dt: Millis = match u.int_in_range(0..=15u8)? {
            0..=5 => 0,
            6..=9 => u.int_in_range(1..=3_000)?,
            10 => claim_wait(),
            11..=12 => u.int_in_range(3_000..=50_000)?,
            13 => *u.choose(&[11_000, 31_000, 46_000, 61_000])?, // past the claim windows, the ring timeout, the IVR timeout
            14 => u.int_in_range(590_000..=610_000)?,           // around the code TTL
            _ => HOUR + 1,
        };
        self.now += dt;
        Ok(())
    }

    /// The current platform call id of an IVR slot (renewed when the engine may have forgotten
    /// the call: the platform never reuses an id).
    fn ivr_call(&mut self, slot: usize) -> String {
        let mut call = format!("ivr-{slot}.{}", self.slots[slot]);
        if self.ivr.get(&call).is_some_and(|m| self.now.saturating_sub(m.last) >= IVR_RENEW_AFTER) {
            self.ivr.remove(&call);
            self.slots[slot] += 1;
            call = format!("ivr-{slot}.{}", self.slots[slot]);
        }
        call
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
                let random = self.pool(u)?;
                Input::Create { principal, account_name: u.arbitrary::<bool>()?.then(|| format!("Name of {account}")), account: account.into(), pbx: pbx.map(Into::into), extension: extension.into(), id: id.into(), random, code, now }
            }
            3..=4 => Input::Complete { principal: self.principal(u)?, id: self.some_id(u)?.into(), random: self.pool(u)?, now },
            5 => Input::Cancel { principal: self.principal(u)?, id: self.some_id(u)?.into(), now },
            6..=10 => {
                if self.pending.is_empty() {
                    Input::Timeout { now }
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
                                Ok(CstaResultInfo { call: named.then(|| CallId::from(c.clone())) })
                            }
                            None => Ok(CstaResultInfo::default()),
                        }
                    };
                    Input::CstaDone { id: p.id, outcome, now }
                }
            }
            11..=15 => {
                // On a call the PBX placed for the engine (most often), or a foreign one.
                let (pbx, extension, call) = if !self.calls.is_empty() && u.ratio(3, 4)? {
                    let n = self.calls.len();
                    let k = &self.calls[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)];
                    (k.pbx.clone(), k.extension.clone(), k.id.clone())
                } else {
                    ((*u.choose(&PBXS)?).to_owned(), (*u.choose(&EXTS)?).to_owned(), vec![0xF0 | u.int_in_range(0..=1u8)?])
                };
                let event = match u.int_in_range(0..=7u8)? {
                    0 => CallEvent::Initiated { call: call.into() },
                    1 => CallEvent::Originated { call: call.into() },
                    2 => CallEvent::Delivered { call: call.into() },
                    3..=5 => CallEvent::Established { call: call.into() },
                    6 => CallEvent::Failed { call: call.into(), cause: *u.choose(&[None, Some(3), Some(18), Some(10), Some(99)])? },
                    _ => CallEvent::Cleared { call: call.into() },
                };
                Input::CstaEvent { pbx: pbx.into(), extension: extension.into(), event, now }
            }
            16..=22 => {
                let slot = usize::from(u.int_in_range(0..=(IVR_SLOTS as u8 - 1))?);
                if u.ratio(1, 16)? {
                    // A new platform call in this slot.
                    self.slots[slot] += 1;
                }
                let call = self.ivr_call(slot);
                let latest_ext = self.ids.last().and_then(|id| self.store.assocs.get(id)).map(|v| v.extension.clone());
                let from = match u.int_in_range(0..=4u8)? {
                    0 => String::new(),
                    1 => "anonymous".to_owned(),
                    2..=3 => format!("{DID_PREFIX}{}", latest_ext.unwrap_or_else(|| EXTS[0].into())),
                    _ => format!("{DID_PREFIX}{}", u.choose(&EXTS)?),
                };
                let code = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
                    // Mostly the latest association's code.
                    if let Some(c) = fz.ids.last().and_then(|id| fz.codes.get(id)).filter(|_| u.ratio(3, 4).unwrap_or(true)) {
                        return Ok(c.clone());
                    }
                    let mut v: Vec<&String> = fz.codes.values().collect();
                    v.sort();
                    Ok(if v.is_empty() { "135791".to_owned() } else { (*u.choose(&v)?).clone() })
                };
                let ctx = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
                    let n = fz.seen.len();
                    Ok(if n == 0 { MADE_UP_CONTEXT.to_owned() } else { fz.seen[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)].clone() })
                };
                let digits = match u.int_in_range(0..=15u8)? {
                    0 => None,
                    1..=3 => Some(code(self, u)?),
                    4 => Some(format!("{}#", code(self, u)?)),
                    5 => Some("000000".to_owned()),
                    6..=7 => Some("1".to_owned()),
                    8 => Some("9".to_owned()),
                    9 => Some(String::new()),
                    10..=12 => Some(format!("*{}#", ctx(self, u)?)),
                    13 => Some(ctx(self, u)?),
                    14 => Some(format!("*{MADE_UP_CONTEXT}#")),
                    _ => Some(format!("{}", u.int_in_range(0..=99u8)?)),
                };
                let to = (*u.choose(&IVR_NUMBERS)?).to_owned();
                Input::Ivr { call, from, to, digits, now }
            }
            23 => {
                let slot = usize::from(u.int_in_range(0..=(IVR_SLOTS as u8 - 1))?);
                let call = self.ivr_call(slot);
                // The platform never reuses the id of a call that ended.
                self.slots[slot] += 1;
                Input::IvrHangup { call, now }
            }
            24 => Input::LinkDown { pbx: (*u.choose(&PBXS)?).into(), now },
            25 => {
                let principal = self.principal(u)?;
                let account = if u.ratio(1, 4)? { None } else { Some((*u.choose(&ACCOUNTS)?).to_owned()) };
                Input::Unbind { principal, account: account.map(Into::into), pbx: (*u.choose(&PBXS)?).into(), extension: (*u.choose(&EXTS)?).into(), now }
            }
            26 => {
                let scope = if u.arbitrary::<bool>()? {
                    AdminScope::Extension { pbx: (*u.choose(&PBXS)?).into(), extension: (*u.choose(&EXTS)?).into() }
                } else {
                    let tenant = if u.ratio(1, 3)? { None } else { Some((*u.choose(&TENANTS)?).to_owned()) };
                    AdminScope::Account { tenant: tenant.map(Into::into), account: (*u.choose(&ACCOUNTS)?).into() }
                };
                if u.arbitrary::<bool>()? {
                    Input::ResetCounters { scope, now }
                } else {
                    Input::LiftBlocks { scope, now }
                }
            }
            27 => {
                self.restart();
                return Ok(());
            }
            28 => {
                // A PBX repeating events about an attempt's call.
                let target = self.store.assocs.values().filter(|v| !is_final(v) && matches!(v.state, State::Calling | State::Ringing | State::InIvr)).filter_map(|v| Some((v.pbx.clone(), v.extension.clone(), v.call.clone()?))).last();
                let n = u.int_in_range(1..=250u16)?;
                let kind = u.int_in_range(0..=2u8)?;
                match target.and_then(|(p, e, c)| Some((p, e, c.as_bytes().to_vec()))) {
                    Some((pbx, extension, call)) => {
                        for _ in 0..n {
                            let event = match kind {
                                0 => CallEvent::Initiated { call: call.clone().into() },
                                1 => CallEvent::Originated { call: call.clone().into() },
                                _ => CallEvent::Delivered { call: call.clone().into() },
                            };
                            self.feed(Input::CstaEvent { pbx: pbx.clone(), extension: extension.clone(), event, now });
                        }
                        return Ok(());
                    }
                    None => Input::Timeout { now },
                }
            }
            29 => {
                // Right at the deadline of a waiting IVR request (the shell's timer).
                if let Some(until) = self.waits.values().map(|(_, t)| *t).min() {
                    self.now = self.now.max(until + u.int_in_range(0..=1u64)?);
                }
                Input::Timeout { now: self.now }
            }
            _ => Input::Timeout { now },
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
        // up: the new engine must clear what the store names). The IVR platform's pending
        // requests died with the process; its calls are new to the new engine.
        self.pending.clear();
        self.live.clear();
        self.ivr_before = None;
        self.ivr.clear();
        self.waits.clear();
        let pre = self.store.clone();
        self.actions(&actions, None, &pre);
        // Nothing in memory survives: no context is live.
        self.ctx_live.clear();
        for a in self.attempts.values_mut() {
            a.ctx = None;
            a.waiting = None;
        }
        for v in self.store.assocs.values() {
            if !is_final(v) {
                self.fail(format!("association {} still {:?} after a restart", v.id, v.state));
            }
        }
        self.check(None);
    }

    /// The claim rules (see the module docs of `ivr.rs`): how a request of `call` presenting the
    /// current attempt of association `id` must end.
    fn claim_rule(&self, call: &str, first: Millis, from: &str, id: &str) -> Claim {
        let (Some(v), Some(a)) = (self.store.assocs.get(id), self.attempts.get(id)) else {
            self.fail(format!("a context of association {id}, which the model does not hold"));
        };
        // Only the first call to present the attempt may claim it: a second one is not the proof
        // call, whatever became of the first (claimed, waiting, or hung up while it waited).
        if a.claimed.as_deref().is_some_and(|c| c != call) || a.waiting.as_deref().is_some_and(|c| c != call) || a.presenters.first().is_some_and(|c| c != call) {
            return Claim::Mismatch;
        }
        let p = self.policy(&v.pbx);
        if let Some(prefix) = &p.did_prefix {
            if !from.is_empty() && from != format!("{prefix}{}", v.extension) {
                return Claim::Mismatch;
            }
        }
        match v.state {
            State::InIvr => match &a.established {
                Some((at, _)) => {
                    if first + claim_wait() < *at || first > at + p.ivr_claim_window.as_millis() as Millis {
                        Claim::Mismatch
                    } else {
                        Claim::Claimed
                    }
                }
                None => self.fail(format!("association {id} in_ivr but the PBX never reported its call established")),
            },
            State::Calling | State::Ringing => Claim::Wait,
            _ => Claim::Mismatch,
        }
    }

    /// With `context_delivery = none`: the one live proof call whose extension's DID is `from`.
    fn by_calling_number(&self, from: &str) -> Option<String> {
        let found: Vec<&AssociationView> = self
            .store
            .assocs
            .values()
            .filter(|v| !is_final(v) && matches!(v.state, State::Calling | State::Ringing | State::InIvr))
            .filter(|v| {
                let p = self.policy(&v.pbx);
                p.context_delivery == ContextDelivery::None && p.did_prefix.as_ref().is_some_and(|d| from == format!("{d}{}", v.extension))
            })
            .collect();
        match found.as_slice() {
            [one] => Some(one.id.to_string()),
            _ => None,
        }
    }

    fn feed(&mut self, input: Input) {
        self.trace.push(format!("{input:?}"));
        let pre = self.store.clone();
        let now = self.now;
        // What the model expects of an IVR request that presents an attempt.
        let mut presented: Option<(String, Claim)> = None;
        self.ivr_before = None;
        match &input {
            Input::LinkDown { pbx, .. } => {
                for p in self.pending.iter_mut().filter(|p| p.pbx == *pbx) {
                    p.link_lost = true;
                }
            }
            Input::CstaEvent { pbx, extension, event, .. } => {
                if let CallEvent::Cleared { call } = event {
                    let call = &call.as_bytes().to_vec();
                    for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == *call) {
                        c.down = true;
                    }
                }
                // The engine counts the events about the call an attempt follows.
                if let Some(v) = pre.live_on(pbx, extension) {
                    if matches!(v.state, State::Calling | State::Ringing | State::InIvr) && v.call.as_ref().is_none_or(|c| c == event.call()) {
                        if let Some(a) = self.attempts.get_mut(v.id.as_str()) {
                            a.events += 1;
                        }
                    }
                }
            }
            Input::Ivr { call, from, digits, .. } => {
                let m = self.ivr.get(call).cloned().unwrap_or(IvrCallModel { first: now, last: now, from: from.clone(), expect: Expect::New });
                let d = entered(digits.as_deref());
                let target = match &m.expect {
                    Expect::New if !d.is_empty() => self.ctx_live.get(&d).cloned(),
                    Expect::New => self.by_calling_number(from),
                    Expect::Context => self.ctx_live.get(&d).cloned(),
                    _ => None,
                };
                if let Some(id) = target {
                    let rule = self.claim_rule(call, m.first, &m.from, &id);
                    presented = Some((id, rule));
                }
                self.ivr_before = Some((call.clone(), m.expect.clone()));
                self.ivr.insert(call.clone(), IvrCallModel { last: now, ..m });
            }
            Input::IvrHangup { call, .. } => {
                self.ivr.remove(call);
                // A waiting call that hangs up ends its attempt (call_cleared): nobody waits any
                // more, and the attempt is not left to a later call.
                self.waits.remove(call);
            }
            _ => {}
        }
        let out = handle(&mut self.engine, input.clone());
        self.trace.push(format!("  -> {:?} code={:?} error={:?} ivr={:?} wait={}", out.actions, out.code, out.error, out.ivr, out.ivr_wait));
        if let (Some(code), Some(v)) = (&out.code, &out.view) {
            if self.codes.contains_key(v.id.as_str()) || !self.live.insert(v.id.to_string()) {
                self.fail(format!("a code issued twice for {}", v.id));
            }
            self.codes.insert(v.id.to_string(), code.clone());
            self.ids.push(v.id.to_string());
        }
        self.actions(&out.actions, Some((&input, &out)), &pre);
        // Nothing the API or the IVR shows holds a code or a context id (but the creation's
        // `code` field).
        let secrets = self.secrets();
        let secrets: HashSet<&str> = secrets.iter().map(String::as_str).collect();
        if let Some(v) = &out.view {
            if view_leaks(v, &secrets) {
                self.fail(format!("a view holds a code or a context id: {v:?}"));
            }
        }
        if let Some(r) = &out.ivr {
            if leaks(&r.say, &secrets) {
                self.fail(format!("an IVR prompt holds a code or a context id: {}", r.say));
            }
        }
        match &input {
            Input::Create { id, .. } => self.check_create(id, &out, &pre),
            Input::Ivr { call, .. } => self.check_ivr(call, &out, presented),
            Input::CstaEvent { pbx, extension, .. } => {
                if let Some(v) = pre.live_on(pbx, extension) {
                    let events = self.attempts.get(v.id.as_str()).map_or(0, |a| a.events);
                    let flood = out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Association(w)) if w.id == v.id && w.reason == Some(Reason::PbxFlood)));
                    if events == MAX_ATTEMPT_EVENTS + 1 && matches!(v.state, State::Calling | State::Ringing | State::InIvr) && !flood {
                        self.fail(format!("association {} got {events} events about its call and goes on", v.id));
                    }
                    if flood {
                        count(11);
                        if events <= MAX_ATTEMPT_EVENTS {
                            self.fail(format!("association {} failed as pbx_flood after {events} events", v.id));
                        }
                    }
                }
            }
            Input::ResetCounters { scope, .. } => {
                if let Some((k, n)) = self.store.counters.iter().find(|(k, n)| **n > 0 && scope_counter(scope, k)) {
                    self.fail(format!("counter {k:?} still {n} after a reset of {scope:?}"));
                }
            }
            Input::LiftBlocks { scope, .. } => {
                if let Some(b) = self.store.blocks.values().find(|b| b.until > now && scope_block(scope, b)) {
                    self.fail(format!("block {b:?} still in force after lifting {scope:?}"));
                }
            }
            _ => {}
        }
        self.check(Some(&input));
    }

    /// The codes issued and the contexts drawn: what nothing shown may hold.
    fn secrets(&self) -> HashSet<String> {
        self.codes.values().chain(self.contexts.iter()).cloned().collect()
    }

    /// Invariant 6 for a Create: a success passed every limit; a refusal leaves nothing.
    fn check_create(&self, id: &str, out: &Output, pre: &Store) {
        if out.error.is_some() {
            if out.code.is_some() {
                self.fail(format!("a refused create ({:?}) gave a code", out.error));
            }
            let was_live = pre.assocs.get(id).is_some_and(|v| !is_final(v));
            if !was_live && self.store.assocs.get(id).is_some_and(|v| !is_final(v)) {
                self.fail(format!("a refused create ({:?}) left association {id} live", out.error));
            }
            if out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::ProofCall(_))) || matches!(a, Action::Csta { association, request, .. } if association == id && !matches!(request, CstaRequest::ClearConnection { .. } | CstaRequest::MonitorStop { .. }))) {
                self.fail(format!("a refused create ({:?}) placed a proof call or asked the PBX for work", out.error));
            }
            if matches!(out.error, Some(Refusal::BlockedByPhoneOwner(_))) {
                count(10);
            }
            return;
        }
        let Some(v) = &out.view else { return };
        let p = self.policy(&v.pbx);
        if pre.bindings.contains_key(&(v.pbx.to_string(), v.extension.to_string())) {
            self.fail(format!("create of {id} on a bound extension"));
        }
        if pre.blocked(&v.tenant, &v.account, &v.pbx, &v.extension, self.now) {
            self.fail(format!("create of {id}: {}/{} is blocked from {}/{} by its owner", v.tenant, v.account, v.pbx, v.extension));
        }
        let acc = CounterKey::Account { tenant: v.tenant.clone(), account: v.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: v.tenant.clone(), account: v.account.clone(), pbx: v.pbx.clone(), extension: v.extension.clone() };
        if pre.counter(&acc) >= p.lockout_after || pre.counter(&acc_ext) >= p.lockout_after {
            self.fail(format!("create of {id} for a locked-out account"));
        }
        let (all, mine) = self.proof_calls_within_hour(pre, &v.pbx, &v.extension, &v.tenant, &v.account, self.now);
        if all >= p.proof_calls_per_hour || mine >= p.proof_calls_per_hour.div_ceil(2) {
            self.fail(format!("create of {id} past the proof-call limit ({all} calls to the extension, {mine} of the account)"));
        }
    }

    /// Proof calls to (pbx, ext) in the hour before `now`, and those of one account.
    fn proof_calls_within_hour(&self, store: &Store, pbx: &str, ext: &str, tenant: &str, account: &str, now: Millis) -> (usize, usize) {
        let calls: Vec<&ProofCall> = store.proof_calls.iter().filter(|c| c.pbx == pbx && c.extension == ext && now.saturating_sub(c.at) < HOUR).collect();
        let mine = calls.iter().filter(|c| c.tenant == tenant && c.account == account).count();
        (calls.len(), mine)
    }

    /// Invariant 3 for an IVR request: the claim rules both ways, and what the platform is asked
    /// for next.
    fn check_ivr(&mut self, call: &str, out: &Output, presented: Option<(String, Claim)>) {
        let before = self.ivr_before.clone().map(|(_, e)| e).unwrap_or(Expect::New);
        let prompt = out.ivr.as_ref().map(|r| r.prompt);
        if out.ivr_wait != out.ivr.is_none() {
            self.fail(format!("IVR call {call}: ivr_wait {} with reply {:?}", out.ivr_wait, out.ivr));
        }
        let next = match presented {
            Some((id, rule)) => {
                if let Some(a) = self.attempts.get_mut(&id) {
                    a.presenters.push(call.to_owned());
                }
                let failed_as_mismatch = out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Association(v)) if v.id == id && v.reason == Some(Reason::IvrCallMismatch)))
                    && out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Audit(r)) if r.association == id && r.step == "suspected_attack"))
                    && out.actions.iter().any(|a| matches!(a, Action::Notify { event, association, .. } if *association == id && event == "suspected_attack"));
                match rule {
                    Claim::Claimed if prompt == Some("confirm_account") => {
                        count(6);
                        if let Some(a) = self.attempts.get_mut(&id) {
                            a.claimed = Some(call.to_owned());
                        }
                        Expect::Confirm(id)
                    }
                    Claim::Wait if out.ivr_wait => {
                        count(7);
                        let until = self.now + claim_wait();
                        if let Some(a) = self.attempts.get_mut(&id) {
                            a.waiting = Some(call.to_owned());
                        }
                        self.waits.insert(call.to_owned(), (id.clone(), until));
                        Expect::Waiting(id)
                    }
                    Claim::Mismatch if prompt == Some("not_linked") && failed_as_mismatch => {
                        count(8);
                        Expect::Over
                    }
                    _ => self.fail(format!("IVR call {call} presented association {id}: the rules say {rule:?}, the engine answered {:?} (wait {}, failed as a mismatch {failed_as_mismatch})", out.ivr, out.ivr_wait)),
                }
            }
            None => {
                if let Expect::Waiting(id) = &before {
                    // The platform asked again before the answer: it still waits.
                    if !out.ivr_wait {
                        self.fail(format!("IVR call {call} waiting on {id} asked again and got {:?}", out.ivr));
                    }
                    before.clone()
                } else if out.ivr_wait || prompt == Some("confirm_account") {
                    self.fail(format!("IVR call {call} presented no live attempt (it was asked for {before:?}) and the engine answered {:?} (wait {})", out.ivr, out.ivr_wait));
                } else {
                    match (&before, prompt) {
                        (Expect::Confirm(id) | Expect::Code(id), Some("enter_code" | "wrong_code")) => Expect::Code(id.clone()),
                        (_, Some("enter_code" | "wrong_code")) => self.fail(format!("IVR call {call} asked for a code, but it was asked for {before:?}")),
                        (_, Some("enter_context" | "unknown_context")) => Expect::Context,
                        _ => Expect::Over,
                    }
                }
            }
        };
        if let Some(m) = self.ivr.get_mut(call) {
            m.expect = next;
        }
    }

    /// Apply the actions of one output to the models, checking each.
    fn actions(&mut self, actions: &[Action], cause: Option<(&Input, &Output)>, pre: &Store) {
        let secrets = self.secrets();
        let secrets: HashSet<&str> = secrets.iter().map(String::as_str).collect();
        let now = self.now;
        let mut binds = Vec::new();
        for a in actions {
            match a {
                Action::Store(StoreWrite::Association(v)) => {
                    let old = self.store.assocs.get(v.id.as_str()).cloned();
                    if let Some(old) = &old {
                        if is_final(old) && (old.state, old.reason, old.retryable) != (v.state, v.reason, v.retryable) {
                            self.fail(format!("final association {} changed from {:?}/{:?} to {:?}/{:?}", v.id, old.state, old.reason, v.state, v.reason));
                        }
                    }
                    if view_leaks(v, &secrets) {
                        self.fail(format!("a stored association holds a code or a context id: {v:?}"));
                    }
                    // At most MAX_HISTORY steps and the "truncated" marker before the newest.
                    if v.history.len() > MAX_HISTORY + 1 || (v.history.len() == MAX_HISTORY + 1 && v.history[MAX_HISTORY - 1].step != "truncated") {
                        self.fail(format!("association {} has a history of {} steps", v.id, v.history.len()));
                    }
                    let old_state = old.as_ref().map(|o| o.state);
                    if old_state != Some(v.state) {
                        match v.state {
                            State::CodeIssued => count(0),
                            State::InIvr => count(1),
                            State::Bound => count(2),
                            State::Failed if v.reason == Some(Reason::AttemptsExhausted) => count(3),
                            State::Failed if v.reason == Some(Reason::RefusedByPhoneOwner) => count(9),
                            State::Expired => count(4),
                            _ => {}
                        }
                    }
                    if v.state == State::InIvr && matches!(old_state, Some(State::Calling | State::Ringing)) {
                        // The attempt's call was answered at the IVR: only the PBX says so.
                        let Some((Input::CstaEvent { event: CallEvent::Established { call }, .. }, _)) = cause else {
                            self.fail(format!("association {} in_ivr without the PBX reporting its call established", v.id));
                        };
                        if let Some(att) = self.attempts.get_mut(v.id.as_str()) {
                            att.established = Some((now, call.as_bytes().to_vec()));
                        }
                    }
                    if !in_attempt(v.state) {
                        // The attempt is over: its context id is free again.
                        if let Some(ctx) = self.attempts.get_mut(v.id.as_str()).and_then(|a| a.ctx.take()) {
                            if self.ctx_live.get(&ctx) == Some(&v.id.to_string()) {
                                self.ctx_live.remove(&ctx);
                            }
                        }
                    }
                    if v.state == State::Bound && old.as_ref().is_none_or(|o| o.state != State::Bound) {
                        // The IVR hangs up the proof call of a bound association.
                        for c in self.calls.iter_mut().filter(|c| c.association == v.id) {
                            c.down = true;
                        }
                    }
                    self.store.assocs.insert(v.id.to_string(), v.clone());
                }
                Action::Store(StoreWrite::Bind(b)) => {
                    let key = (b.pbx.to_string(), b.extension.to_string());
                    if self.store.bindings.contains_key(&key) {
                        self.fail(format!("a second binding for {key:?}: {b:?}"));
                    }
                    self.store.bindings.insert(key, b.clone());
                    binds.push(b.clone());
                }
                Action::Store(StoreWrite::Unbind { pbx, extension }) => {
                    if self.store.bindings.remove(&(pbx.to_string(), extension.to_string())).is_none() {
                        self.fail(format!("unbind of {pbx}/{extension}, which is not bound"));
                    }
                }
                Action::Store(StoreWrite::Counter { key, value }) => {
                    self.check_counter(key, *value, cause);
                    self.store.counters.insert(key.clone(), *value);
                }
                Action::Store(StoreWrite::ProofCall(c)) => {
                    self.proof_call(c, cause);
                    self.store.proof_calls.push(c.clone());
                }
                Action::Store(StoreWrite::Block(b)) => {
                    self.check_block(b, cause);
                    self.store.blocks.insert((b.tenant.to_string(), b.account.to_string(), b.pbx.to_string(), b.extension.to_string()), b.clone());
                }
                Action::Store(StoreWrite::Unblock { tenant, account, pbx, extension }) => {
                    let key = (tenant.to_string(), account.to_string(), pbx.to_string(), extension.to_string());
                    let Some((Input::LiftBlocks { scope, .. }, _)) = cause else {
                        self.fail(format!("block {key:?} lifted by something other than the admin"));
                    };
                    match self.store.blocks.get(&key) {
                        Some(b) if b.until > now && scope_block(scope, b) => {}
                        b => self.fail(format!("lifting {scope:?} lifted {key:?}, which is {b:?}")),
                    }
                    self.store.blocks.remove(&key);
                }
                Action::Store(StoreWrite::Audit(r)) => {
                    if [r.step.as_str(), r.result.as_str(), r.association.as_str(), r.account.as_str(), r.tenant.as_str(), r.pbx.as_str(), r.extension.as_str()].iter().any(|s| leaks(s, &secrets)) {
                        self.fail(format!("an audit record holds a code or a context id: {r:?}"));
                    }
                    if r.step == "code_entered" && r.result == "wrong_code" {
                        let n = self.wrong.entry(r.association.to_string()).or_insert(0);
                        *n += 1;
                        if *n > MAX_CODE_ENTRIES {
                            let n = *n;
                            self.fail(format!("{n} wrong entries of the code of {}", r.association));
                        }
                    }
                }
                Action::Notify { tenant, account, event, association } => {
                    if [tenant.as_str(), account.as_str(), event.as_str(), association.as_str()].iter().any(|s| leaks(s, &secrets)) {
                        self.fail(format!("a notification holds a code or a context id: {a:?}"));
                    }
                }
                Action::IvrReply { call, reply } => self.ivr_reply(call, reply, &secrets),
                Action::Csta { id: request_id, association, pbx, request } => {
                    let mut call = None;
                    match request {
                        CstaRequest::MakeCall { from, to } => {
                            self.next_call += 1;
                            let id = vec![0xC0, (self.next_call >> 8) as u8, self.next_call as u8];
                            let lock = to == LOCK_PREFIX;
                            let attempt = self.attempts.get(association.as_str()).map_or(0, |a| a.n);
                            if !lock {
                                self.check_dial(association, pbx, to);
                            }
                            self.calls.push(Call { pbx: pbx.to_string(), extension: from.to_string(), id: id.clone(), association: association.to_string(), attempt, lock, exists: false, down: false });
                            call = Some(id);
                        }
                        CstaRequest::SendDigits { digits, .. } => {
                            let ctx = self.attempts.get(association.as_str()).and_then(|a| a.ctx.clone());
                            if self.policy(pbx).context_delivery != ContextDelivery::Dtmf || ctx.as_ref().is_none_or(|c| *digits != format!("*{c}#")) {
                                self.fail(format!("SendDigits {digits:?} for {association}, whose attempt's context is {ctx:?} ({:?} delivery)", self.policy(pbx).context_delivery));
                            }
                            if let Some(c) = ctx {
                                self.seen.push(c);
                            }
                        }
                        CstaRequest::ClearConnection { call, .. } => {
                            for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == call.as_bytes()) {
                                c.down = true;
                            }
                        }
                        _ => {}
                    }
                    self.pending.push(Pending { id: *request_id, association: association.to_string(), pbx: pbx.to_string(), request: request.clone(), call, link_lost: false, sent: self.now });
                }
            }
        }
        for b in binds {
            self.check_bind(&b, actions, cause, pre);
        }
    }

    /// A MakeCall to the IVR: the number, with the attempt's context only for `dial_suffix`.
    fn check_dial(&mut self, association: &str, pbx: &str, to: &str) {
        let p = self.policy(pbx);
        let ctx = self.attempts.get(association).and_then(|a| a.ctx.clone());
        let Some(ctx) = ctx else { self.fail(format!("a proof call for {association}, which has no live attempt")) };
        let want = match p.context_delivery {
            ContextDelivery::DialSuffix => format!("{}*{ctx}#", p.ivr_number),
            _ => p.ivr_number.clone(),
        };
        if to != want {
            self.fail(format!("the proof call of {association} dials {to:?}, not {want:?} ({:?} delivery)", p.context_delivery));
        }
        if p.context_delivery == ContextDelivery::DialSuffix {
            self.seen.push(ctx);
        }
    }

    /// A proof call is charged: a new attempt of the association the Create or Complete named,
    /// within every limit; the model draws its context id as the engine must.
    fn proof_call(&mut self, c: &ProofCall, cause: Option<(&Input, &Output)>) {
        let (id, random) = match cause {
            Some((Input::Create { id, random, .. } | Input::Complete { id, random, .. }, _)) => (id.to_string(), random.clone()),
            _ => self.fail(format!("a proof call charged by something other than a Create or Complete: {c:?}")),
        };
        let Some(v) = self.store.assocs.get(&id) else { self.fail(format!("a proof call for {id}, which the store does not hold")) };
        if (&c.pbx, &c.extension, &c.tenant, &c.account, c.at) != (&v.pbx, &v.extension, &v.tenant, &v.account, self.now) {
            self.fail(format!("proof call {c:?} charged for association {v:?}"));
        }
        let p = self.policy(&c.pbx);
        let (all, mine) = self.proof_calls_within_hour(&self.store, &c.pbx, &c.extension, &c.tenant, &c.account, self.now);
        if all + 1 > p.proof_calls_per_hour || mine + 1 > p.proof_calls_per_hour.div_ceil(2) {
            self.fail(format!("proof call {c:?}: {} to the extension within an hour, {} of the account (limit {})", all + 1, mine + 1, p.proof_calls_per_hour));
        }
        let acc = CounterKey::Account { tenant: c.tenant.clone(), account: c.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: c.tenant.clone(), account: c.account.clone(), pbx: c.pbx.clone(), extension: c.extension.clone() };
        if self.store.counter(&acc) >= p.lockout_after || self.store.counter(&acc_ext) >= p.lockout_after {
            self.fail(format!("proof call {c:?} for a locked-out account"));
        }
        if self.store.blocked(&c.tenant, &c.account, &c.pbx, &c.extension, self.now) {
            self.fail(format!("proof call {c:?} for an account the phone's owner blocked"));
        }
        // The first full chunk of the pool's digits not held by a live attempt.
        let n = p.context_digits;
        let digits: Vec<u8> = random.bytes().filter(u8::is_ascii_digit).collect();
        let ctx = digits.chunks(n).filter(|c| c.len() == n).map(|c| c.iter().map(|b| char::from(*b)).collect::<String>()).find(|c| !self.ctx_live.contains_key(c));
        let Some(ctx) = ctx else { self.fail(format!("proof call for {id} though its randomness {random:?} holds no free context id")) };
        if let Some(old) = self.attempts.get(&id).and_then(|a| a.ctx.clone()) {
            self.fail(format!("a new attempt of {id} while its attempt with context {old} is live"));
        }
        let n = self.attempts.get(&id).map_or(0, |a| a.n) + 1;
        self.ctx_live.insert(ctx.clone(), id.clone());
        self.contexts.insert(ctx.clone());
        self.attempts.insert(id, Attempt { n, ctx: Some(ctx), ..Attempt::default() });
    }

    /// Counters are charged to the account that asked (+1 on its wrong code) and reset only by
    /// its binding or an admin reset in scope.
    fn check_counter(&self, key: &CounterKey, value: u32, cause: Option<(&Input, &Output)>) {
        let old = self.store.counter(key);
        match (cause, value) {
            (Some((Input::ResetCounters { scope, .. }, _)), 0) if scope_counter(scope, key) => {}
            (Some((Input::Ivr { .. }, _)), _) => {
                let Some((_, Expect::Code(id))) = &self.ivr_before else {
                    self.fail(format!("counter {key:?} set to {value} by an IVR request that entered no code"));
                };
                let Some(v) = self.store.assocs.get(id) else { self.fail(format!("counter {key:?} charged for {id}, which the store does not hold")) };
                let ours = match key {
                    CounterKey::Account { tenant, account } => (tenant, account) == (&v.tenant, &v.account),
                    CounterKey::AccountExtension { tenant, account, pbx, extension } => (tenant, account, pbx, extension) == (&v.tenant, &v.account, &v.pbx, &v.extension),
                };
                if !ours || (value != 0 && value != old.saturating_add(1)) {
                    self.fail(format!("counter {key:?} set from {old} to {value} by a code entry of association {id} ({}/{})", v.tenant, v.account));
                }
            }
            _ => self.fail(format!("counter {key:?} set from {old} to {value} by {:?}", cause.map(|c| c.0))),
        }
    }

    /// An owner block comes only from a 9 on the call that claimed the attempt, after the account
    /// was named.
    fn check_block(&self, b: &OwnerBlock, cause: Option<(&Input, &Output)>) {
        let Some((Input::Ivr { call, digits, now, .. }, _)) = cause else { self.fail(format!("block {b:?} not from an IVR request")) };
        let Some((_, Expect::Confirm(id))) = &self.ivr_before else { self.fail(format!("block {b:?} from IVR call {call}, which was not asked to confirm")) };
        let Some(v) = self.store.assocs.get(id) else { self.fail(format!("block {b:?} for {id}, which the store does not hold")) };
        let owner_block = self.policy(&v.pbx).owner_block.as_millis() as Millis;
        let claimed = self.attempts.get(id).and_then(|a| a.claimed.as_deref()) == Some(call.as_str());
        if entered(digits.as_deref()) != "9" || !claimed || (&b.tenant, &b.account, &b.pbx, &b.extension, b.until) != (&v.tenant, &v.account, &v.pbx, &v.extension, now + owner_block) {
            self.fail(format!("block {b:?} from IVR call {call} (claimed {claimed}) with digits {digits:?} for association {v:?}"));
        }
    }

    /// The answer to a waiting IVR request: only to a waiting call, and naming the account only
    /// to a call the claim rules let claim.
    fn ivr_reply(&mut self, call: &str, reply: &IvrReply, secrets: &HashSet<&str>) {
        if leaks(&reply.say, secrets) {
            self.fail(format!("an IVR prompt holds a code or a context id: {}", reply.say));
        }
        let Some((id, _)) = self.waits.remove(call) else { self.fail(format!("an IvrReply for IVR call {call}, which is not waiting: {reply:?}")) };
        count(12);
        if let Some(a) = self.attempts.get_mut(&id) {
            if a.waiting.as_deref() == Some(call) {
                a.waiting = None;
            }
        }
        let next = if reply.prompt == "confirm_account" {
            let m = self.ivr.get(call).cloned();
            let ok = match (m, self.attempts.get(&id), self.store.assocs.get(&id)) {
                (Some(m), Some(a), Some(v)) => {
                    let p = self.policy(&v.pbx);
                    v.state == State::InIvr
                        && a.presenters.first().map(String::as_str) == Some(call)
                        && a.established.as_ref().is_some_and(|(at, _)| m.first + claim_wait() >= *at && m.first <= at + p.ivr_claim_window.as_millis() as Millis)
                        && p.did_prefix.as_ref().is_none_or(|d| m.from.is_empty() || m.from == format!("{d}{}", v.extension))
                }
                _ => false,
            };
            if !ok {
                self.fail(format!("IVR call {call} claimed association {id} after waiting, against the rules (model call {:?}, attempt {:?})", self.ivr.get(call), self.attempts.get(&id)));
            }
            count(6);
            if let Some(a) = self.attempts.get_mut(&id) {
                a.claimed = Some(call.to_owned());
            }
            Expect::Confirm(id)
        } else if reply.hangup {
            Expect::Over
        } else {
            self.fail(format!("IVR call {call} waiting on {id} got {reply:?}"));
        };
        if let Some(m) = self.ivr.get_mut(call) {
            m.expect = next;
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
        let id = v.id.as_str();
        let Some(before) = pre.assocs.get(id) else { self.fail(format!("binding for association {id} the store never held")) };
        if (b.tenant.as_str(), b.account.as_str(), b.bound_at) != (v.tenant.as_str(), v.account.as_str(), *now) {
            self.fail(format!("binding {b:?} does not match its association {v:?}"));
        }
        if before.state != State::InIvr {
            self.fail(format!("association {id} bound from state {:?}", before.state));
        }
        if self.ivr_before.as_ref().map(|(_, e)| e) != Some(&Expect::Code(id.to_owned())) {
            self.fail(format!("IVR call {call} bound association {id} but had been asked for {:?}", self.ivr_before));
        }
        let Some(att) = self.attempts.get(id) else { self.fail(format!("association {id} bound without an attempt")) };
        if att.claimed.as_deref() != Some(call.as_str()) || att.presenters.first() != Some(call) {
            self.fail(format!("IVR call {call} bound association {id}, whose attempt was claimed by {:?} (presented by {:?})", att.claimed, att.presenters));
        }
        let Some((at, est_call)) = &att.established else { self.fail(format!("association {id} bound before the PBX reported its proof call established")) };
        if !self.calls.iter().any(|c| c.association == *id && c.attempt == att.n && !c.lock && c.id == *est_call) {
            self.fail(format!("association {id} bound, but the call the PBX reported established ({est_call:02x?} at {at}) is not the MakeCall of its attempt {}", att.n));
        }
        let entered = entered(digits.as_deref());
        let Some(code) = self.codes.get(id) else { self.fail(format!("association {id} bound but no code was issued for it")) };
        if entered != *code {
            self.fail(format!("association {id} bound with digits {digits:?}, not its code"));
        }
        if *now >= before.expires_at {
            self.fail(format!("association {id} bound at {now}, its code expired at {}", before.expires_at));
        }
        let wrong = self.wrong.get(id).copied().unwrap_or(0);
        if wrong >= MAX_CODE_ENTRIES {
            self.fail(format!("association {id} bound after {wrong} wrong entries of its code"));
        }
        let limit = self.policy(&b.pbx).lockout_after;
        let acc = CounterKey::Account { tenant: b.tenant.clone(), account: b.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: b.tenant.clone(), account: b.account.clone(), pbx: b.pbx.clone(), extension: b.extension.clone() };
        if pre.counter(&acc) >= limit || pre.counter(&acc_ext) >= limit {
            self.fail(format!("association {id} bound while locked out"));
        }
        if pre.blocked(&b.tenant, &b.account, &b.pbx, &b.extension, *now) {
            self.fail(format!("association {id} bound while the phone's owner blocks {}/{} from {}/{}", b.tenant, b.account, b.pbx, b.extension));
        }
        if !out.ivr.as_ref().is_some_and(|r| r.hangup) {
            self.fail(format!("association {id} bound but the IVR does not hang up"));
        }
    }

    /// The invariants on the whole state, after every step.
    fn check(&self, input: Option<&Input>) {
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
            if self.wrong.get(v.id.as_str()).copied().unwrap_or(0) >= MAX_CODE_ENTRIES && !is_final(v) {
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
        // A waiting request's attempt still rings; a timeout past its deadline answered it.
        for (call, (id, until)) in &self.waits {
            let state = self.store.assocs.get(id).map(|v| v.state);
            if !matches!(state, Some(State::Calling | State::Ringing)) {
                self.fail(format!("IVR call {call} still waits on association {id}, which is {state:?}"));
            }
            if matches!(input, Some(Input::Timeout { .. })) && self.now >= *until {
                self.fail(format!("IVR call {call} waiting on {id} got no answer by its deadline {until} (tick at {})", self.now));
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
