//! The member tables of every CSTA type the codec decodes, per dialect: one place that says what
//! the bytes of each argument, result and event body are.
//!
//! Phase III follows ECMA-285 (protocol brief §4.2–4.7): `DeviceID` is `30 {..}`, event bodies
//! are IMPLICIT-tagged SEQUENCEs. Phase II follows ECMA-217/218 as Alcatel OXE speaks it (§4.10
//! and the OXE captures): `DeviceID` is a bare CHOICE, several arguments and results are bare
//! values ([`Form::Bare`], which also accepts their unverified wrapped form, asn1/README.md P8),
//! and event bodies are plain SEQUENCEs under EXPLICIT tags. Member names are ECMA-285's
//! throughout.

use super::body::{opt, req, FieldName as F, Form, Kind as K, Slot, EXTENSIONS};
use super::operation::Operation;
use super::values::Dialect;

const CONN: &[u8] = &[0x6B];
const SUBJ: &[u8] = &[0x63];
const CALLING: &[u8] = &[0x61];
const CALLED: &[u8] = &[0x62];
const REDIR: &[u8] = &[0x64];
const LCS: &[u8] = &[0x4E];
const CAUSE: &[u8] = &[0x0A];
const USERDATA: &[u8] = &[0x7D];
/// Phase III `DeviceID`.
const DEV3: &[u8] = &[0x30];
/// Phase II `DeviceID`: any alternative of the bare CHOICE.
const DEV2: &[u8] = &[];

/// A `'static` slot table (const fn calls are not promoted to `'static` outside a const item).
macro_rules! slots {
    ($($slot:expr),* $(,)?) => {{
        const S: &[Slot] = &[$($slot),*];
        S
    }};
}

const fn ext() -> Slot {
    EXTENSIONS
}
/// An ASN.1 ANY: any single value, kept verbatim.
const ANY: &[u8] = &[];

/// Argument and result forms of an operation in a dialect; `None` for operations the codec
/// carries as opaque bytes.
pub fn argument(op: Operation, d: Dialect) -> Option<Form> {
    use Operation as O;
    Some(match (op, d) {
        (O::MonitorStart, Dialect::Phase3) => Form::Sequence(slots![
            opt(F::MonitorObject, DEV3, K::DeviceId),
            opt(F::MonitorObject, CONN, K::Connection),
            opt(F::MonitorFilter, &[0xA0], K::Raw),
            opt(F::MonitorType, &[0x0A], K::Int),
            opt(F::MonitorMediaClass, &[0x81], K::Raw),
            ext(),
        ]),
        (O::MonitorStart, Dialect::Phase2) => Form::Sequence(slots![
            opt(F::MonitorObject, DEV2, K::DeviceId),
            opt(F::MonitorObject, CONN, K::Connection),
            opt(F::MonitorFilter, &[0xA0, 0x30], K::Raw),
            opt(F::MonitorType, &[0x0A], K::Int),
            ext(),
        ]),
        (O::MonitorStop, Dialect::Phase3) => Form::Sequence(slots![req(F::CrossRefIdentifier, &[0x55], K::Octets), ext()]),
        (O::MonitorStop, Dialect::Phase2) => Form::Bare(req(F::CrossRefIdentifier, &[0x55], K::Octets)),
        (O::MakeCall, Dialect::Phase3) => Form::Sequence(slots![
            req(F::CallingDevice, DEV3, K::DeviceId),
            req(F::CalledDirectoryNumber, DEV3, K::DeviceId),
            opt(F::AccountCode, &[0x80], K::Octets),
            opt(F::AuthCode, &[0x81], K::Octets),
            opt(F::AutoOriginate, &[0x83], K::Int),
            opt(F::CorrelatorData, &[0x82], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            ext(),
        ]),
        (O::MakeCall, Dialect::Phase2) => Form::Sequence(slots![
            req(F::CallingDevice, DEV2, K::DeviceId),
            req(F::CalledDirectoryNumber, CALLED, K::Device),
            opt(F::AccountCode, &[0x80], K::Octets),
            opt(F::AuthCode, &[0x81], K::Octets),
            ext(),
        ]),
        (O::ClearConnection, Dialect::Phase3) => Form::Sequence(slots![
            req(F::ConnectionToBeCleared, CONN, K::Connection),
            opt(F::CorrelatorData, &[0x04], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Reason, CAUSE, K::Int),
            ext(),
        ]),
        (O::ClearConnection, Dialect::Phase2) => Form::Bare(req(F::ConnectionToBeCleared, CONN, K::Connection)),
        (O::GenerateDigits, Dialect::Phase3) => Form::Sequence(slots![
            req(F::ConnectionToSendDigits, CONN, K::Connection),
            opt(F::DigitMode, &[0x0A], K::Int),
            req(F::CharactersToSend, &[0x16], K::Text),
            opt(F::ToneDuration, &[0x80], K::Int),
            opt(F::PulseRate, &[0x81], K::Int),
            opt(F::PauseDuration, &[0x82], K::Int),
            ext(),
        ]),
        (O::GenerateDigits, Dialect::Phase2) => Form::Sequence(slots![
            req(F::ConnectionToSendDigits, CONN, K::Connection),
            req(F::CharactersToSend, &[0x16], K::Text),
            ext(),
        ]),
        (O::SnapshotDevice, Dialect::Phase3) => Form::Sequence(slots![req(F::SnapshotObject, DEV3, K::DeviceId), ext()]),
        (O::SnapshotDevice, Dialect::Phase2) => Form::Bare(req(F::SnapshotObject, DEV2, K::DeviceId)),
        (O::SystemStatus, Dialect::Phase3) => Form::Sequence(slots![
            opt(F::SysStatRegisterId, &[0x04], K::Octets),
            req(F::SystemStatus, &[0x0A], K::Int),
            ext(),
        ]),
        (O::SystemStatus, Dialect::Phase2) => Form::Bare(req(F::SystemStatus, &[0x0A], K::Int)),
        (O::Escape, _) => Form::Opaque(F::PrivateData),
        _ => return None,
    })
}

pub fn result(op: Operation, d: Dialect) -> Option<Form> {
    use Operation as O;
    Some(match (op, d) {
        (O::MonitorStart, _) => Form::Sequence(slots![
            req(F::CrossRefIdentifier, &[0x55], K::Octets),
            opt(F::ActualMonitorFilter, &[0xA0, 0x30], K::Raw),
            opt(F::ActualMonitorMediaClass, &[0x81], K::Raw),
            opt(F::MonitorExistingCalls, &[0x01], K::Raw),
            ext(),
        ]),
        (O::MakeCall, Dialect::Phase3) => Form::Sequence(slots![
            req(F::CallingDevice, CONN, K::Connection),
            opt(F::MediaCallCharacteristics, &[0xA0], K::Raw),
            opt(F::ConnectionInfo, &[0xA1], K::Raw),
            opt(F::CallLinkageData, &[0xA2], K::Raw),
            ext(),
        ]),
        (O::MakeCall, Dialect::Phase2) => Form::Bare(req(F::CallingDevice, CONN, K::Connection)),
        (O::SnapshotDevice, Dialect::Phase3) => Form::Opaque(F::SnapshotData),
        // SnapshotDeviceData (76) as far as anyone knows, kept verbatim; a SEQUENCE is read as
        // the wrapped form, which may then hold no data at all.
        (O::SnapshotDevice, Dialect::Phase2) => Form::Bare(opt(F::SnapshotData, ANY, K::Raw)),
        (O::Escape, _) => Form::Opaque(F::PrivateData),
        (O::MonitorStop | O::ClearConnection | O::GenerateDigits | O::SystemStatus, _) => Form::ExtensionsOrNull,
        _ => return None,
    })
}

/// Call-control and call-associated event kinds the codec decodes into named members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    CallCleared,
    Conferenced,
    ConnectionCleared,
    Delivered,
    Diverted,
    Established,
    Failed,
    Held,
    NetworkReached,
    Originated,
    Retrieved,
    ServiceInitiated,
    Transferred,
    DigitsGenerated,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::CallCleared,
        EventKind::Conferenced,
        EventKind::ConnectionCleared,
        EventKind::Delivered,
        EventKind::Diverted,
        EventKind::Established,
        EventKind::Failed,
        EventKind::Held,
        EventKind::NetworkReached,
        EventKind::Originated,
        EventKind::Retrieved,
        EventKind::ServiceInitiated,
        EventKind::Transferred,
        EventKind::DigitsGenerated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::CallCleared => "callCleared",
            EventKind::Conferenced => "conferenced",
            EventKind::ConnectionCleared => "connectionCleared",
            EventKind::Delivered => "delivered",
            EventKind::Diverted => "diverted",
            EventKind::Established => "established",
            EventKind::Failed => "failed",
            EventKind::Held => "held",
            EventKind::NetworkReached => "networkReached",
            EventKind::Originated => "originated",
            EventKind::Retrieved => "retrieved",
            EventKind::ServiceInitiated => "serviceInitiated",
            EventKind::Transferred => "transferred",
            EventKind::DigitsGenerated => "digitsGenerated",
        }
    }

    /// Where the event sits in `EventSpecificInfo`: (group tag number, alternative tag number).
    /// Phase III numbers call-control events from bridged = 0 (§4.4); Phase II from
    /// callCleared = 0 (§4.10). `None`: not defined in that dialect.
    pub fn position(self, d: Dialect) -> Option<(u8, u8)> {
        use EventKind as E;
        let cc = match (self, d) {
            (E::DigitsGenerated, Dialect::Phase3) => return Some((1, 2)),
            (E::DigitsGenerated, Dialect::Phase2) => return None,
            (E::CallCleared, _) => [1, 0],
            (E::Conferenced, _) => [2, 1],
            (E::ConnectionCleared, _) => [3, 2],
            (E::Delivered, _) => [4, 3],
            (E::Diverted, _) => [6, 4],
            (E::Established, _) => [7, 5],
            (E::Failed, _) => [8, 6],
            (E::Held, _) => [9, 7],
            (E::NetworkReached, _) => [11, 8],
            (E::Originated, _) => [13, 9],
            (E::Retrieved, _) => [15, 11],
            (E::ServiceInitiated, _) => [16, 12],
            (E::Transferred, _) => [17, 13],
        };
        Some((0, if d == Dialect::Phase3 { cc[0] } else { cc[1] }))
    }

    pub fn from_position(group: u8, alt: u8, d: Dialect) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.position(d) == Some((group, alt)))
    }

    /// The event body's members.
    pub fn form(self, d: Dialect) -> Form {
        match d {
            Dialect::Phase3 => Form::Sequence(phase3_event(self)),
            Dialect::Phase2 => Form::Sequence(phase2_event(self)),
        }
    }
}

/// Members shared by the tails of Phase III call events: network and associated devices.
macro_rules! p3_event {
    ($($slot:expr),* $(,)?) => {
        slots![$($slot,)*
          opt(F::NetworkCallingDevice, &[0x67], K::Device),
          opt(F::NetworkCalledDevice, &[0x68], K::Device),
          opt(F::AssociatedCallingDevice, &[0x65], K::Device),
          opt(F::AssociatedCalledDevice, &[0x66], K::Device),
          ext()]
    };
}

fn phase3_event(k: EventKind) -> &'static [Slot] {
    use EventKind as E;
    match k {
        E::ServiceInitiated => p3_event![
            req(F::InitiatedConnection, CONN, K::Connection),
            opt(F::InitiatingDevice, SUBJ, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Originated => p3_event![
            req(F::OriginatedConnection, CONN, K::Connection),
            opt(F::CallingDevice, SUBJ, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::OriginatingDevice, DEV3, K::DeviceId),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x82], K::Octets),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Delivered => p3_event![
            req(F::Connection, CONN, K::Connection),
            opt(F::AlertingDevice, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
            opt(F::OriginatingNidConnection, CONN, K::Connection),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Established => p3_event![
            req(F::EstablishedConnection, CONN, K::Connection),
            opt(F::AnsweringDevice, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
            opt(F::OriginatingNidConnection, CONN, K::Connection),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x81], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::ConnectionCleared => p3_event![
            req(F::DroppedConnection, CONN, K::Connection),
            opt(F::ReleasingDevice, SUBJ, K::Device),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::ChargingInfo, &[0xA1], K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::CallCleared => p3_event![
            req(F::ClearedCall, CONN, K::Connection),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Failed => p3_event![
            req(F::FailedConnection, CONN, K::Connection),
            opt(F::FailingDevice, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
            opt(F::OriginatingNidConnection, CONN, K::Connection),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::NetworkReached => p3_event![
            req(F::OutboundConnection, CONN, K::Connection),
            opt(F::NetworkInterfaceUsed, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
            opt(F::OriginatingNidConnection, CONN, K::Connection),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::NetworkCapability, &[0xA1], K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Held => p3_event![
            req(F::HeldConnection, CONN, K::Connection),
            opt(F::HoldingDevice, SUBJ, K::Device),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Retrieved => p3_event![
            req(F::RetrievedConnection, CONN, K::Connection),
            opt(F::RetrievingDevice, SUBJ, K::Device),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Transferred => p3_event![
            req(F::PrimaryOldCall, CONN, K::Connection),
            opt(F::SecondaryOldCall, &[0x80, 0xA0], K::Raw),
            opt(F::TransferringDevice, SUBJ, K::Device),
            opt(F::TransferredToDevice, SUBJ, K::Device),
            opt(F::ConnectionList, &[0xA1, 0x30], K::Raw),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x82], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Conferenced => p3_event![
            req(F::PrimaryOldCall, CONN, K::Connection),
            opt(F::SecondaryOldCall, CONN, K::Connection),
            opt(F::ConferencingDevice, SUBJ, K::Device),
            opt(F::AddedParty, SUBJ, K::Device),
            opt(F::ConnectionList, &[0x30], K::Raw),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::Diverted => p3_event![
            req(F::Connection, CONN, K::Connection),
            opt(F::DivertingDevice, SUBJ, K::Device),
            opt(F::NewDestination, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
            opt(F::LocalConnectionInfo, LCS, K::Int),
            opt(F::CorrelatorData, &[0x80], K::Octets),
            opt(F::UserData, USERDATA, K::Raw),
            opt(F::Cause, CAUSE, K::Int),
        ],
        E::DigitsGenerated => slots![
            req(F::Connection, CONN, K::Connection),
            req(F::DigitsGeneratedList, &[0x16], K::Text),
            opt(F::Unknown, &[0xA0], K::Raw),
            opt(F::Unknown, &[0xA1], K::Raw),
            ext(),
        ],
    }
}

/// Phase II bodies (ECMA-217 field order, checked against the OXE captures).
fn phase2_event(k: EventKind) -> &'static [Slot] {
    use EventKind as E;
    const TAIL: [Slot; 3] = [opt(F::LocalConnectionInfo, LCS, K::Int), opt(F::Cause, CAUSE, K::Int), ext()];
    macro_rules! p2 {
        ($($slot:expr),* $(,)?) => { slots![$($slot,)* TAIL[0], TAIL[1], TAIL[2]] };
    }
    match k {
        E::CallCleared => p2![req(F::ClearedCall, CONN, K::Connection)],
        E::Conferenced => p2![
            req(F::PrimaryOldCall, CONN, K::Connection),
            opt(F::SecondaryOldCall, CONN, K::Connection),
            opt(F::ConferencingDevice, SUBJ, K::Device),
            opt(F::AddedParty, SUBJ, K::Device),
            opt(F::ConnectionList, &[0x30], K::Raw),
        ],
        E::ConnectionCleared => p2![req(F::DroppedConnection, CONN, K::Connection), opt(F::ReleasingDevice, SUBJ, K::Device)],
        E::Delivered => p2![
            req(F::Connection, CONN, K::Connection),
            opt(F::AlertingDevice, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
        ],
        E::Diverted => p2![
            opt(F::Connection, CONN, K::Connection),
            opt(F::DivertingDevice, SUBJ, K::Device),
            // OXE sends the new destination as a SubjectDeviceID (63) where ECMA-217 has
            // CalledDeviceID (62): accept both.
            opt(F::NewDestination, &[0x62, 0x63], K::Device),
        ],
        E::Established => p2![
            req(F::EstablishedConnection, CONN, K::Connection),
            opt(F::AnsweringDevice, SUBJ, K::Device),
            opt(F::CallingDevice, CALLING, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
            opt(F::LastRedirectionDevice, REDIR, K::Device),
        ],
        E::Failed => p2![
            req(F::FailedConnection, CONN, K::Connection),
            opt(F::FailingDevice, SUBJ, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
        ],
        E::Held => p2![req(F::HeldConnection, CONN, K::Connection), opt(F::HoldingDevice, SUBJ, K::Device)],
        E::NetworkReached => p2![
            req(F::OutboundConnection, CONN, K::Connection),
            opt(F::NetworkInterfaceUsed, SUBJ, K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
        ],
        E::Originated => p2![
            req(F::OriginatedConnection, CONN, K::Connection),
            // OXE sends the calling device as CallingDeviceID (61) where ECMA-217 has
            // SubjectDeviceID (63): accept both (found by the asn1tools differential test).
            opt(F::CallingDevice, &[0x63, 0x61], K::Device),
            opt(F::CalledDevice, CALLED, K::Device),
        ],
        E::Retrieved => p2![req(F::RetrievedConnection, CONN, K::Connection), opt(F::RetrievingDevice, SUBJ, K::Device)],
        E::ServiceInitiated => p2![req(F::InitiatedConnection, CONN, K::Connection)],
        E::Transferred => p2![
            req(F::PrimaryOldCall, CONN, K::Connection),
            opt(F::SecondaryOldCall, CONN, K::Connection),
            opt(F::TransferringDevice, SUBJ, K::Device),
            opt(F::TransferredToDevice, SUBJ, K::Device),
            opt(F::ConnectionList, &[0x30], K::Raw),
        ],
        // Not a Phase II event; never looked up (position() is None).
        E::DigitsGenerated => p2![req(F::Connection, CONN, K::Connection)],
    }
}
