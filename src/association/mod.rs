//! The association engine: the product's logic, as a sans-IO state machine (design.md).
//!
//! An end user binds their own desk-phone extension to their cloud account by answering a call
//! on that very phone and keying a one-time code into the IVR (patent description S1–S36; issue
//! "association flow"). The engine is driven through one typed entry point per caller, each
//! input with an explicit `now`: [`Engine::api`] (API requests: `Result<ApiReply, Refusal>`),
//! [`Engine::ivr`] (IVR requests: an [`IvrAnswer`]), [`Engine::csta`] (CSTA results by
//! [`RequestId`], events, link losses) and the timer interface — [`Engine::poll_timeout`] names
//! the earliest deadline, [`Engine::handle_timeout`] does what is due. Each answers with
//! [`Action`]s — CSTA requests to send, store writes, IVR prompts, notifications. It does no I/O,
//! reads no clock and draws no random numbers (codes and ids come in with the request), so tests
//! and fuzzers drive it directly.
//!
//! Security rules (product-notes.md, issue 9):
//! - **Only the proof call binds.** Each attempt draws a new context id (the shell's CSPRNG
//!   digits), which leaves the gateway only inside the proof call (dial suffix or DTMF) and is
//!   never shown to the app. An IVR call may act on an attempt only if the PBX reported that
//!   attempt's call answered at the IVR (`in_ivr`), the IVR call started within
//!   `ivr_claim_window` of that, it presents the context id, and no other IVR call claimed the
//!   attempt first. Anything else — a second call with the context id, a call that started while
//!   the phone still rang, a calling number that contradicts the extension's DID — fails the
//!   attempt as `ivr_call_mismatch` (a suspected attack: audited and notified), clears the call.
//! - 6-digit single-use codes from a CSPRNG, valid 10 minutes, compared in constant time, never
//!   logged or stored; at most 3 entries per IVR call and 5 per code.
//! - **Failures are charged to whoever asked**: per requesting account (lock-out after
//!   `lockout_after`, not reset by a new code) and per (account, extension); another account's
//!   failures never lock out an extension's owner. At most `proof_calls_per_hour` proof calls per
//!   extension, of which one requesting account gets at most half (rounded up). A request refused
//!   by a limit issues no code and leaves nothing live.
//! - **The phone's owner can say no**: the IVR names the asking account and tenant (and the
//!   tenant-supplied display name, marked as such) and takes 1 (I asked for this) or 9 (I did
//!   not): 9 blocks that account from that extension for `owner_block`.
//! - One live association per account and per extension; an account only reaches extensions of
//!   its own tenant's PBXs; histories are capped and a PBX flooding events fails the attempt.

mod engine;
/// For the tests and the fuzz oracle only (the `testkit` feature).
#[cfg(feature = "testkit")]
pub mod harness;
mod ivr;
mod limits;
mod model;
mod pbx;
mod restore;
mod timers;

pub use model::{Engine, Sizes};
pub use limits::Judged;
pub use restore::Snapshot;
pub use ivr::CONFIRM_KEY;
pub use crate::csta::{CallEvent, CallId};
pub use crate::ids::{AccountId, AssociationId, Extension, PbxId, TenantId};

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

/// Milliseconds since the Unix epoch: the engine's only notion of time.
pub type Millis = u64;

/// Where an association stands. Serialized as the API's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Code issued; waiting for "I'm at my phone" (or for a retry after a failed attempt).
    CodeIssued,
    /// MonitorStart sent for the extension.
    Monitoring,
    /// Locking the phone through the PBX's lock prefix.
    Locking,
    /// MakeCall from the extension to the IVR sent.
    Calling,
    /// The phone rings (the PBX prompts its user).
    Ringing,
    /// The user is connected to the IVR.
    InIvr,
    Bound,
    /// The last attempt failed; `retryable` says whether the user may try again.
    Failed,
    Expired,
    Cancelled,
}

impl State {
    /// No further transition: the association is over.
    pub fn is_final(self, retryable: bool) -> bool {
        match self {
            State::Bound | State::Expired | State::Cancelled => true,
            State::Failed => !retryable,
            _ => false,
        }
    }
}

/// Why an attempt or an association failed. Serialized as the API's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    WrongCode,
    AttemptsExhausted,
    NoAnswer,
    Busy,
    PhoneLocked,
    LinkDown,
    RejectedByPbx,
    Expired,
    /// The call ended before the code was entered correctly.
    CallCleared,
    /// The user did not press the confirm key after hearing the account's name.
    NotConfirmed,
    /// Too many failures on this extension or account: an admin must reset the counter.
    LockedOut,
    /// More proof calls to this extension this hour than allowed.
    RateLimited,
    GatewayRestarted,
    CancelledByUser,
    /// The IVR platform stopped sending requests for the connected call.
    IvrTimeout,
    /// An IVR call that is not the proof call presented the attempt's context id, or the calling
    /// number contradicts the extension's DID: a suspected attack.
    IvrCallMismatch,
    /// The person at the phone pressed 9: they did not ask for this.
    RefusedByPhoneOwner,
    /// The PBX sent more events about the proof call than any real call has.
    PbxFlood,
    /// The proof call left the extension (diverted by call forwarding, transferred or
    /// conferenced): whoever keys the code may not be at that phone.
    CallDiverted,
    /// The code goes out of band (`code_delivery = "notify"`) and its notification was given
    /// up: the user never got it, so waiting for them would only wait for the expiry.
    CodeNotDelivered,
    /// A configuration reload removed the association's PBX: final.
    PbxRemoved,
}

/// Where the one-time code goes (per tenant: `code_delivery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeDelivery {
    /// In the answer to `POST /v1/associations`.
    #[default]
    Api,
    /// Only in the `code_issued` notification to the tenant's HTTPS endpoint (out of band):
    /// whoever holds the tenant's API token alone cannot read it.
    Notify,
}

/// The one-time code in an action: its `Debug` hides it, so that an action printed in a log or
/// a test failure does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretCode(pub String);

impl std::fmt::Debug for SecretCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the context id reaches the IVR (per PBX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextDelivery {
    /// Dialled after the IVR number: `<ivr>*<context>#`.
    DialSuffix,
    /// Sent with GenerateDigits/SendDTMFTones once the call is established.
    Dtmf,
    /// Not sent: the IVR finds the association by calling number (the extension's DID, with
    /// `did_prefix`) and the timing of the answer alone. Weaker: caller ID can be spoofed.
    None,
    /// Not sent: each attempt holds one number of the PBX's pool (`ivr_numbers`) from its start
    /// until it ends, and the proof call dials it; the number the IVR call reached (`To`) names
    /// the attempt, and the proof-call rules (the PBX's report of the answer, the timing, the
    /// first claim, the DID) still decide whether the IVR call is the proof call.
    NumberPool,
}

/// Whether `to`, the number an IVR call reached as the IVR platform reports it, is the pool
/// number `number` as the PBX dials it. Liberal: the same string, or the same number once both
/// lose what is not a digit and their leading zeros, one ending the other (`+33800100201` is
/// `0800100201` dialled nationally), with at least [`POOL_MATCH_DIGITS`] digits in common.
/// The configuration refuses pools where two numbers would match one `To`.
pub fn pool_number_matches(number: &str, to: &str) -> bool {
    if number == to {
        return true;
    }
    let significant = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>().trim_start_matches('0').to_owned();
    let (a, b) = (significant(number), significant(to));
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= POOL_MATCH_DIGITS && long.ends_with(&short)
}

/// Digits two numbers must share (after the leading zeros) to be taken as one pool number.
pub const POOL_MATCH_DIGITS: usize = 6;

/// The per-PBX policy of the association flow.
#[derive(Debug, Clone)]
pub struct Policy {
    pub tenant: String,
    /// Extensions of this PBX that may be associated, with optional display names.
    pub directory: HashMap<String, Option<String>>,
    pub ivr_number: String,
    /// With [`ContextDelivery::NumberPool`]: the IVR's numbers, one held by each live attempt.
    pub ivr_numbers: Vec<String>,
    pub context_delivery: ContextDelivery,
    pub require_completion: bool,
    /// Lock the phone first (MakeCall to this prefix); the user unlocks with the local PIN.
    pub lock_prefix: Option<String>,
    pub code_digits: usize,
    /// Digits of the context id drawn for each proof call (8..=16).
    pub context_digits: usize,
    pub code_ttl: Duration,
    /// How long the phone may ring (and the call take to reach the IVR) before `no_answer`.
    pub ring_timeout: Duration,
    /// How long the IVR platform may stay silent about a connected call (no webhook request or
    /// FastAGI step for it) before `ivr_timeout`: the platform lost us, the call is cleared.
    pub ivr_timeout: Duration,
    /// Proof calls to one extension per hour; one requesting account gets at most half (rounded
    /// up).
    pub proof_calls_per_hour: usize,
    pub lockout_after: u32,
    /// How long after the PBX reports the proof call answered at the IVR the IVR call may start
    /// and claim the attempt.
    pub ivr_claim_window: Duration,
    /// How long a 9 ("I did not ask for this") keeps the asking account from the extension.
    pub owner_block: Duration,
    /// Prefix that turns an extension into the number the IVR sees as calling (its DID), used to
    /// find an association by calling number when the context id is not delivered.
    pub did_prefix: Option<String>,
    /// Where the code goes: the API's answer, or the tenant's notification endpoint.
    pub code_delivery: CodeDelivery,
    /// The language the IVR speaks to this PBX's phones (BCP 47, as the catalogue spells it).
    pub language: String,
    /// The prompt texts of every language (the configuration's one catalogue, shared by every
    /// policy): the engine picks a prompt id and its values, the words are the catalogue's.
    pub prompts: std::sync::Arc<crate::ivr::prompts::Prompts>,
}

impl Policy {
    pub fn new(tenant: &str, ivr_number: &str) -> Policy {
        Policy {
            tenant: tenant.to_owned(),
            directory: HashMap::new(),
            ivr_number: ivr_number.to_owned(),
            ivr_numbers: Vec::new(),
            context_delivery: ContextDelivery::DialSuffix,
            require_completion: false,
            lock_prefix: None,
            code_digits: 6,
            context_digits: 8,
            code_ttl: Duration::from_secs(600),
            ring_timeout: Duration::from_secs(45),
            ivr_timeout: Duration::from_secs(60),
            proof_calls_per_hour: 3,
            lockout_after: 100,
            ivr_claim_window: Duration::from_secs(30),
            owner_block: Duration::from_secs(24 * 3600),
            did_prefix: None,
            code_delivery: CodeDelivery::Api,
            language: crate::ivr::prompts::DEFAULT_LANGUAGE.to_owned(),
            prompts: std::sync::Arc::new(crate::ivr::prompts::Prompts::shipped()),
        }
    }

    /// Whether `tenant` may ask for `extension` on this PBX: the PBX is the tenant's, and its
    /// directory lists the extension (how a create finds its PBX, in the engine and, with
    /// `[cluster]`, in the routing before it).
    pub fn lists(&self, tenant: &str, extension: &str) -> bool {
        self.tenant == tenant && self.directory.contains_key(extension)
    }

    /// Whether `to`, the number an IVR call reached as the platform reports it, is this PBX's
    /// IVR number or one of its pool's ([`pool_number_matches`]).
    pub fn answers_number(&self, to: &str) -> bool {
        !to.is_empty() && (pool_number_matches(&self.ivr_number, to) || self.ivr_numbers.iter().any(|n| pool_number_matches(n, to)))
    }
}

/// Who is asking: a tenant's service acting for one of its accounts, or the admin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Tenant(TenantId),
    Admin,
}

/// One step of an association's history (API `history`, and the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub at: Millis,
    pub step: String,
    pub detail: String,
}

/// What the API shows of an association. Never the code after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AssociationView {
    pub id: AssociationId,
    pub tenant: TenantId,
    pub account: AccountId,
    pub pbx: PbxId,
    pub extension: Extension,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub retryable: bool,
    pub expires_at: Millis,
    /// The PBX call id (hex) of the proof call while the gateway may have to clear it: kept in
    /// the store so that a restarted gateway clears a call its predecessor left up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallId>,
    pub history: Vec<Step>,
}

/// An extension bound to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Binding {
    pub tenant: TenantId,
    pub account: AccountId,
    pub pbx: PbxId,
    pub extension: Extension,
    /// The calling number the IVR saw: a hint, not verified identity.
    pub did: Option<String>,
    pub did_verified: bool,
    pub bound_at: Millis,
}

/// An append-only audit record. Never holds a code or a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub at: Millis,
    pub tenant: TenantId,
    pub account: AccountId,
    pub pbx: PbxId,
    pub extension: Extension,
    pub association: AssociationId,
    pub step: String,
    pub result: String,
}

/// Whose failures a counter counts: always the account that asked for the code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CounterKey {
    /// All wrong entries of an account's associations.
    Account { tenant: TenantId, account: AccountId },
    /// Wrong entries of an account's associations on one extension.
    AccountExtension { tenant: TenantId, account: AccountId, pbx: PbxId, extension: Extension },
}

impl CounterKey {
    /// The counters a wrong code of `account`'s association on `extension` adds to: the
    /// account's, and the account's on that extension.
    pub(crate) fn charged(tenant: &str, account: &str, pbx: &str, extension: &str) -> [CounterKey; 2] {
        [
            CounterKey::Account { tenant: tenant.into(), account: account.into() },
            CounterKey::AccountExtension { tenant: tenant.into(), account: account.into(), pbx: pbx.into(), extension: extension.into() },
        ]
    }

    pub fn tenant_account(&self) -> (&str, &str) {
        match self {
            CounterKey::Account { tenant, account } | CounterKey::AccountExtension { tenant, account, .. } => (tenant.as_str(), account.as_str()),
        }
    }
    pub fn extension(&self) -> Option<(&str, &str)> {
        match self {
            CounterKey::Account { .. } => None,
            CounterKey::AccountExtension { pbx, extension, .. } => Some((pbx.as_str(), extension.as_str())),
        }
    }
}

/// One proof call placed, charged to the extension and to the account that asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProofCall {
    pub pbx: PbxId,
    pub extension: Extension,
    pub tenant: TenantId,
    pub account: AccountId,
    pub at: Millis,
}

/// The phone's owner pressed 9: `account` may not ask for `extension` until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OwnerBlock {
    pub tenant: TenantId,
    pub account: AccountId,
    pub pbx: PbxId,
    pub extension: Extension,
    pub until: Millis,
}

/// Whom a block keeps from what: (tenant, account, pbx, extension).
pub(crate) type BlockKey = (TenantId, AccountId, PbxId, Extension);

impl OwnerBlock {
    pub(crate) fn key(&self) -> BlockKey {
        (self.tenant.clone(), self.account.clone(), self.pbx.clone(), self.extension.clone())
    }
}

/// Which counters and blocks an admin reads or resets: those of an extension, or of an account
/// (of one tenant, or of every tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminScope {
    Extension { pbx: PbxId, extension: Extension },
    Account { tenant: Option<TenantId>, account: AccountId },
}

impl AdminScope {
    pub fn counter(&self, k: &CounterKey) -> bool {
        match self {
            AdminScope::Extension { pbx, extension } => k.extension() == Some((pbx.as_str(), extension.as_str())),
            AdminScope::Account { tenant, account } => {
                let (t, a) = k.tenant_account();
                *account == a && tenant.as_ref().is_none_or(|x| *x == t)
            }
        }
    }
    pub fn block(&self, b: &OwnerBlock) -> bool {
        match self {
            AdminScope::Extension { pbx, extension } => b.pbx == *pbx && b.extension == *extension,
            AdminScope::Account { tenant, account } => b.account == *account && tenant.as_ref().is_none_or(|x| *x == b.tenant),
        }
    }
}

/// CSTA work the shell must do on the PBX link ([`Action::Csta`]); the shell builds it with the
/// [`crate::csta`] builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CstaRequest {
    MonitorStart { extension: Extension },
    MonitorStop { extension: Extension },
    /// `to` is a dial string (the IVR number, the lock prefix), not an extension.
    MakeCall { from: Extension, to: String },
    /// DTMF on the extension's connection of the call (GenerateDigits / SendDTMFTones).
    SendDigits { call: CallId, extension: Extension, digits: String },
    ClearConnection { call: CallId, extension: Extension },
}

/// The engine's name for one CSTA request it asked for: its answer comes back as
/// [`CstaInput::Done`] with the same id, and the engine knows from the id alone what the request
/// was for (which association, monitor or lock call or proof call...). Issued by a counter, never
/// reused by one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

/// Writes the shell commits, in order, before carrying out the actions after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    Association(AssociationView),
    Bind(Binding),
    Unbind { pbx: PbxId, extension: Extension },
    /// The counter after a change, which is always one of two: a reset (`0`), or one failure
    /// more (its new value). The PostgreSQL store, where several gateways count one account's
    /// failures, writes the latter as an atomic `+ 1`, not as this value.
    Counter { key: CounterKey, value: u32 },
    ProofCall(ProofCall),
    Block(OwnerBlock),
    /// Lift the owner block of `account` on `extension`.
    Unblock { tenant: TenantId, account: AccountId, pbx: PbxId, extension: Extension },
    Audit(AuditRecord),
}

impl StoreWrite {
    /// The PBX this write is for, when it is for one (what `[cluster]`'s fence checks): an
    /// account-wide counter, or an audit record of no PBX (an unknown context id), is for none.
    pub fn pbx(&self) -> Option<&str> {
        let p = match self {
            StoreWrite::Association(v) => v.pbx.as_str(),
            StoreWrite::Bind(b) => b.pbx.as_str(),
            StoreWrite::Unbind { pbx, .. } | StoreWrite::Unblock { pbx, .. } => pbx.as_str(),
            StoreWrite::Counter { key: CounterKey::AccountExtension { pbx, .. }, .. } => pbx.as_str(),
            StoreWrite::Counter { .. } => return None,
            StoreWrite::ProofCall(c) => c.pbx.as_str(),
            StoreWrite::Block(b) => b.pbx.as_str(),
            StoreWrite::Audit(a) => a.pbx.as_str(),
        };
        (!p.is_empty()).then_some(p)
    }
}

/// What the IVR platform should do next on a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IvrReply {
    /// Which prompt this is (`enter_code`, `confirm_account`, `bound`, ...): IVR adapters that
    /// play recorded files map it to a file name.
    #[serde(skip)]
    pub prompt: &'static str,
    pub say: String,
    /// The BCP 47 language `say` is in (the PBX's `language`), for the platform's text to speech.
    #[schema(example = "fr-FR")]
    pub language: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gather: Option<Gather>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hangup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Gather {
    pub max_digits: usize,
    pub finish_on_key: String,
    pub timeout_ms: u64,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `request` on `pbx`'s link and answer with [`CstaInput::Done`] `{ id, .. }`.
    /// `association` names whom it serves, for the logs.
    Csta { id: RequestId, association: AssociationId, pbx: PbxId, request: CstaRequest },
    Store(StoreWrite),
    /// Tell the account (webhook) what happened: `bound`, `attempt_failed`, `failed`,
    /// `suspected_attack`, `refused_by_phone_owner`, ...
    Notify { tenant: TenantId, account: AccountId, event: String, association: AssociationId },
    /// Send the new association's code to the tenant's notification endpoint (event
    /// `code_issued`; `code_delivery = "notify"`); if that is given up, answer with
    /// [`Engine::code_undelivered`].
    DeliverCode { tenant: TenantId, account: AccountId, association: AssociationId, pbx: PbxId, extension: Extension, code: SecretCode, expires_at: Millis },
    /// The answer to an IVR request that waited ([`IvrAnswer::Wait`]): send it now.
    IvrReply { call: String, reply: IvrReply },
}

/// Why the engine refused an API request, each with a clear reason (the API maps each to a
/// status). Storage failures are not refusals: the gateway reports them apart (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("not found")]
    NotFound,
    #[error("extension {0} is not in the directory of a PBX of this tenant")]
    UnknownExtension(String),
    #[error("extension is already bound to another account")]
    AlreadyBound,
    #[error("an association is already pending for this extension")]
    ExtensionBusy,
    #[error("this account already has an association pending")]
    AccountBusy,
    #[error("too many failed code entries for this extension or account: locked out")]
    LockedOut,
    #[error("too many proof calls to this extension in the last hour")]
    RateLimited,
    #[error("the phone's owner refused a request of this account: blocked until {0}")]
    BlockedByPhoneOwner(Millis),
    #[error("the association is {0:?} and cannot do that")]
    WrongState(State),
    #[error("the code has expired")]
    Expired,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Every number of the PBX's IVR pool is held by a live proof call: try again shortly.
    #[error("every IVR number of this PBX is in use by a proof call; try again shortly")]
    PoolExhausted,
    /// `[cluster]`: the PBX is not owned by this instance (its lease is another's, or free for
    /// a moment during a failover): nothing was done; try again shortly.
    #[error("PBX {0} is not served by this gateway instance right now; try again shortly")]
    NotServed(String),
}

/// API requests to the engine ([`Engine::api`]). `now` is the shell's clock.
#[derive(Debug, Clone)]
pub enum ApiInput {
    /// POST /v1/associations. `id`, `code` and `random` (digits for the first proof call's
    /// context id) are drawn by the shell (CSPRNG).
    Create { principal: Principal, account: AccountId, account_name: Option<String>, pbx: Option<PbxId>, extension: Extension, id: AssociationId, random: String, code: String, now: Millis },
    /// POST /v1/associations/{id}/complete: "I'm at my phone" (or retry); `random` as in Create.
    Complete { principal: Principal, id: AssociationId, random: String, now: Millis },
    /// DELETE /v1/associations/{id}.
    Cancel { principal: Principal, id: AssociationId, now: Millis },
    /// DELETE /v1/bindings/{pbx}/{ext} by the admin or the bound account.
    Unbind { principal: Principal, account: Option<AccountId>, pbx: PbxId, extension: Extension, now: Millis },
    /// Admin: reset the failure counters in scope.
    ResetCounters { scope: AdminScope, now: Millis },
    /// Admin: lift the owner blocks in scope.
    LiftBlocks { scope: AdminScope, now: Millis },
}

/// What an accepted API request answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiReply {
    /// Create: the association, and its code (shown this once); `None` when the tenant's code
    /// goes out of band ([`CodeDelivery::Notify`]: [`Action::DeliverCode`]).
    Created { view: AssociationView, code: Option<String> },
    /// Complete, Cancel: the association as it stands.
    Association(AssociationView),
    /// Unbind, ResetCounters, LiftBlocks.
    Done,
}

/// The IVR platform's request on a call (the first one without digits) ([`Engine::ivr`]).
#[derive(Debug, Clone)]
pub struct IvrInput {
    pub call: String,
    pub from: String,
    pub to: String,
    pub digits: Option<String>,
    pub now: Millis,
}

/// The engine's answer to an IVR request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrAnswer {
    Reply(IvrReply),
    /// The request presented a context id while the proof call was not yet reported answered:
    /// its answer follows as [`Action::IvrReply`] once the PBX reports it, or at the latest at
    /// the deadline [`Engine::poll_timeout`] names ([`CLAIM_WAIT`] after the request).
    Wait,
}

/// What the PBX link reports ([`Engine::csta`]).
#[derive(Debug, Clone)]
pub enum CstaInput {
    /// The answer to the request the engine named `id` ([`Action::Csta`]). Ids the engine does
    /// not know (never issued, or of an association it forgot) are ignored.
    Done { id: RequestId, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis },
    /// A call event on a monitored extension.
    Event { pbx: PbxId, extension: Extension, event: CallEvent, now: Millis },
    /// The PBX link dropped: every attempt in flight on it fails.
    LinkDown { pbx: PbxId, now: Millis },
}

/// An input's answer to its caller with the actions the shell must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Handled<R> {
    pub reply: R,
    pub actions: Vec<Action>,
}

/// What a successful CSTA request returned that the engine needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CstaResultInfo {
    /// MakeCall: the call id of the calling connection.
    pub call: Option<CallId>,
}

/// Why a CSTA request failed, as the engine distinguishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CstaFailure {
    LinkDown,
    /// The calling device is busy (stateIncompatibility / invalidCallingDeviceState).
    Busy,
    /// Any other refusal (universalFailure, reject, timeout).
    Rejected,
}

/// How long an IVR request that came just before the PBX's report of the answer may wait for it.
pub const CLAIM_WAIT: Duration = Duration::from_secs(2);
