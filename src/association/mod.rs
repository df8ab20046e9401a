//! The association engine: the product's logic, as a sans-IO state machine (design.md).
//!
//! An end user binds their own desk-phone extension to their cloud account by answering a call
//! on that very phone and keying a one-time code into the IVR (patent description S1–S36; issue
//! "association flow"). The engine is driven by [`Input`]s — API requests, CSTA results and
//! events, IVR requests, timer ticks — each with an explicit `now`, and answers with
//! [`Action`]s — CSTA requests to send, store writes, IVR prompts, notifications. It does no I/O,
//! reads no clock and draws no random numbers (codes and ids come in with the request), so tests
//! and fuzzers drive it directly.
//!
//! Security rules (product-notes.md): 6-digit single-use codes from a CSPRNG (drawn by the
//! shell), valid 10 minutes, compared in constant time, never logged or stored; at most 3 code
//! entries per IVR call and 5 per code; failures counted per extension and per account, not reset
//! by a new code, lock-out after 100; the IVR names the account and requires a confirm key before
//! taking the code (anti-phishing); at most 3 proof calls per extension per hour and one live
//! association per account and per extension (ring-flood protection); an account only reaches
//! extensions of its own tenant's PBXs.

mod engine;
mod ivr;

pub use engine::{Engine, Sizes, Snapshot};

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

/// Milliseconds since the Unix epoch: the engine's only notion of time.
pub type Millis = u64;

/// Where an association stands. Serialized as the API's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
}

/// How the context id reaches the IVR (per PBX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextDelivery {
    /// Dialled after the IVR number: `<ivr>*<context>#`.
    DialSuffix,
    /// Sent with GenerateDigits/SendDTMFTones once the call is established.
    Dtmf,
    /// Not sent: the IVR finds the association by calling number, or asks the user for it.
    None,
}

/// The per-PBX policy of the association flow.
#[derive(Debug, Clone)]
pub struct Policy {
    pub tenant: String,
    /// Extensions of this PBX that may be associated, with optional display names.
    pub directory: HashMap<String, Option<String>>,
    pub ivr_number: String,
    pub context_delivery: ContextDelivery,
    pub require_completion: bool,
    /// Lock the phone first (MakeCall to this prefix); the user unlocks with the local PIN.
    pub lock_prefix: Option<String>,
    pub code_digits: usize,
    pub code_ttl: Duration,
    /// How long the phone may ring (and the call take to reach the IVR) before `no_answer`.
    pub ring_timeout: Duration,
    /// How long the IVR platform may stay silent about a connected call (no webhook request or
    /// FastAGI step for it) before `ivr_timeout`: the platform lost us, the call is cleared.
    pub ivr_timeout: Duration,
    pub proof_calls_per_hour: usize,
    pub lockout_after: u32,
    /// Prefix that turns an extension into the number the IVR sees as calling (its DID), used to
    /// find an association by calling number when the context id is not delivered.
    pub did_prefix: Option<String>,
}

impl Policy {
    pub fn new(tenant: &str, ivr_number: &str) -> Policy {
        Policy {
            tenant: tenant.to_owned(),
            directory: HashMap::new(),
            ivr_number: ivr_number.to_owned(),
            context_delivery: ContextDelivery::DialSuffix,
            require_completion: false,
            lock_prefix: None,
            code_digits: 6,
            code_ttl: Duration::from_secs(600),
            ring_timeout: Duration::from_secs(45),
            ivr_timeout: Duration::from_secs(60),
            proof_calls_per_hour: 3,
            lockout_after: 100,
            did_prefix: None,
        }
    }
}

/// Who is asking: a tenant's service acting for one of its accounts, or the admin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Tenant(String),
    Admin,
}

/// One step of an association's history (API `history`, and the audit log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Step {
    pub at: Millis,
    pub step: String,
    pub detail: String,
}

/// What the API shows of an association. Never the code after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AssociationView {
    pub id: String,
    pub tenant: String,
    pub account: String,
    pub pbx: String,
    pub extension: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub retryable: bool,
    pub context_id: String,
    pub expires_at: Millis,
    /// The PBX call id (hex) of the proof call while the gateway may have to clear it: kept in
    /// the store so that a restarted gateway clears a call its predecessor left up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    pub history: Vec<Step>,
}

/// An extension bound to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Binding {
    pub tenant: String,
    pub account: String,
    pub pbx: String,
    pub extension: String,
    /// The calling number the IVR saw: a hint, not verified identity.
    pub did: Option<String>,
    pub did_verified: bool,
    pub bound_at: Millis,
}

/// An append-only audit record. Never holds a code or a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub at: Millis,
    pub tenant: String,
    pub account: String,
    pub pbx: String,
    pub extension: String,
    pub association: String,
    pub step: String,
    pub result: String,
}

/// Whose failures a counter counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum CounterKey {
    Extension { pbx: String, extension: String },
    Account { tenant: String, account: String },
}

/// CSTA work the shell must do on the PBX link, tagged with the association it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CstaRequest {
    MonitorStart { extension: String },
    MonitorStop { extension: String },
    MakeCall { from: String, to: String },
    /// DTMF on the extension's connection of the call (GenerateDigits / SendDTMFTones).
    SendDigits { call: Vec<u8>, extension: String, digits: String },
    ClearConnection { call: Vec<u8>, extension: String },
}

/// Writes the shell commits, in order, before carrying out the actions after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    Association(AssociationView),
    Bind(Binding),
    Unbind { pbx: String, extension: String },
    Counter { key: CounterKey, value: u32 },
    ProofCall { pbx: String, extension: String, at: Millis },
    Audit(AuditRecord),
}

/// What the IVR platform should do next on a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IvrReply {
    /// Which prompt this is (`enter_code`, `confirm_account`, `bound`, ...): IVR adapters that
    /// play recorded files map it to a file name.
    #[serde(skip)]
    pub prompt: &'static str,
    pub say: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gather: Option<Gather>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hangup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gather {
    pub max_digits: usize,
    pub finish_on_key: String,
    pub timeout_ms: u64,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Csta { association: String, pbx: String, request: CstaRequest },
    Store(StoreWrite),
    /// Tell the account (webhook) what happened: `bound`, `failed`, `code` (out of band).
    Notify { tenant: String, account: String, event: String, association: String },
}

/// API-level refusals, each with a clear reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
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
    #[error("the association is {0:?} and cannot do that")]
    WrongState(State),
    #[error("the code has expired")]
    Expired,
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// Engine inputs.
#[derive(Debug, Clone)]
pub enum Input {
    /// POST /v1/associations. `id`, `context_id` and `code` are drawn by the shell (CSPRNG).
    Create { principal: Principal, account: String, account_name: Option<String>, pbx: Option<String>, extension: String, id: String, context_id: String, code: String, now: Millis },
    /// POST /v1/associations/{id}/complete: "I'm at my phone" (or retry).
    Complete { principal: Principal, id: String, now: Millis },
    /// DELETE /v1/associations/{id}.
    Cancel { principal: Principal, id: String, now: Millis },
    /// The answer to a CSTA request the engine asked for.
    CstaDone { association: String, request: CstaRequest, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis },
    /// A call event on a monitored extension.
    CstaEvent { pbx: String, extension: String, event: CallEvent, now: Millis },
    /// The PBX link dropped: every attempt in flight on it fails.
    LinkDown { pbx: String, now: Millis },
    /// The IVR platform's request on a call (first one without digits).
    Ivr { call: String, from: String, to: String, digits: Option<String>, now: Millis },
    /// The IVR call ended (hang-up).
    IvrHangup { call: String, now: Millis },
    Tick { now: Millis },
    /// DELETE /v1/bindings/{pbx}/{ext} by the admin or the bound account.
    Unbind { principal: Principal, account: Option<String>, pbx: String, extension: String, now: Millis },
    /// Admin: reset failure counters of an extension and account.
    ResetCounters { key: CounterKey, now: Millis },
}

/// What a successful CSTA request returned that the engine needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CstaResultInfo {
    /// MakeCall: the call id of the calling connection.
    pub call: Option<Vec<u8>>,
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

/// The call events the engine follows, reduced from CSTA events by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// ServiceInitiated: the phone is prompted (rings) for the call.
    Initiated { call: Vec<u8> },
    /// Originated: the user picked up; the call goes out.
    Originated { call: Vec<u8> },
    /// Delivered / NetworkReached: the far end (the IVR) is being reached.
    Delivered { call: Vec<u8> },
    /// Established: the far end answered.
    Established { call: Vec<u8> },
    /// Failed, with the CSTA event cause.
    Failed { call: Vec<u8>, cause: Option<i64> },
    /// ConnectionCleared / CallCleared.
    Cleared { call: Vec<u8> },
}

impl CallEvent {
    pub fn call(&self) -> &[u8] {
        match self {
            CallEvent::Initiated { call } | CallEvent::Originated { call } | CallEvent::Delivered { call } | CallEvent::Established { call } | CallEvent::Failed { call, .. } | CallEvent::Cleared { call } => call,
        }
    }
}

/// The engine's answer to an input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub actions: Vec<Action>,
    /// For API inputs: the association as it stands (with the code once, on creation).
    pub view: Option<AssociationView>,
    pub code: Option<String>,
    pub error: Option<ApiError>,
    /// For IVR inputs.
    pub ivr: Option<IvrReply>,
}
