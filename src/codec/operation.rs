//! The one table of CSTA operations: dialect-neutral operation ↔ local operation code and ECMA
//! name per dialect (protocol brief §2.2). Argument and result types are looked up by operation
//! in `schemas.rs`.

use super::values::Dialect;

macro_rules! operations {
    ($($op:ident: $p3name:literal $p3:expr, $p2name:literal $p2:expr;)*) => {
        /// A CSTA service or the event report, independent of the dialect's numbering.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation { $($op,)* }

        /// (operation, Phase III name and code, Phase II name and code); `None` where the dialect
        /// has no such operation.
        pub const TABLE: &[(Operation, (&str, Option<i64>), (&str, Option<i64>))] = &[
            $((Operation::$op, ($p3name, $p3), ($p2name, $p2)),)*
        ];
    };
}

operations! {
    AlternateCall: "alternateCall" None, "alternateCall" Some(1);
    AnswerCall: "answerCall" Some(2), "answerCall" Some(2);
    CallCompletion: "callCompletion" None, "callCompletion" Some(3);
    ClearCall: "clearCall" Some(4), "clearCall" Some(4);
    ClearConnection: "clearConnection" Some(5), "clearConnection" Some(5);
    ConferenceCall: "conferenceCall" None, "conferenceCall" Some(6);
    ConsultationCall: "consultationCall" Some(7), "consultationCall" Some(7);
    DivertCall: "divertCall" None, "divertCall" Some(8);
    HoldCall: "holdCall" Some(9), "holdCall" Some(9);
    MakeCall: "makeCall" Some(10), "makeCall" Some(10);
    MakePredictiveCall: "makePredictiveCall" None, "makePredictiveCall" Some(11);
    QueryDevice: "queryDevice" None, "queryDevice" Some(12);
    ReconnectCall: "reconnectCall" None, "reconnectCall" Some(13);
    RetrieveCall: "retrieveCall" Some(14), "retrieveCall" Some(14);
    SetFeature: "setFeature" None, "setFeature" Some(15);
    TransferCall: "transferCall" None, "transferCall" Some(16);
    GenerateDigits: "generateDigits" Some(232), "sendDTMFTones" Some(19);
    EventReport: "cSTAEventReport" Some(21), "cSTAEventReport" Some(21);
    SingleStepTransfer: "singleStepTransfer" Some(50), "singleStepTransfer" None;
    Escape: "escape" Some(51), "escape" Some(51);
    SystemStatus: "systemStatus" Some(211), "systemStatus" Some(52);
    MonitorStart: "monitorStart" Some(71), "monitorStart" Some(71);
    ChangeMonitorFilter: "changeMonitorFilter" Some(72), "changeMonitorFilter" Some(72);
    MonitorStop: "monitorStop" Some(73), "monitorStop" Some(73);
    SnapshotDevice: "snapshotDevice" Some(74), "snapshotDevice" Some(74);
    DeflectCall: "deflectCall" Some(218), "deflectCall" None;
    DialDigits: "dialDigits" Some(219), "dialDigits" None;
    GetAgentState: "getAgentState" Some(304), "getAgentState" None;
}

impl Operation {
    /// The local operation code in `dialect`, if the dialect has the operation.
    pub fn code(self, dialect: Dialect) -> Option<i64> {
        TABLE.iter().find(|e| e.0 == self).and_then(|e| match dialect {
            Dialect::Phase3 => e.1 .1,
            Dialect::Phase2 => e.2 .1,
        })
    }

    pub fn from_code(code: i64, dialect: Dialect) -> Option<Operation> {
        TABLE.iter().find(|e| match dialect {
            Dialect::Phase3 => e.1 .1 == Some(code),
            Dialect::Phase2 => e.2 .1 == Some(code),
        }).map(|e| e.0)
    }

    /// lowerCamelCase ECMA name in `dialect` (OXE's DTMF service is `sendDTMFTones`).
    pub fn name(self, dialect: Dialect) -> &'static str {
        TABLE.iter().find(|e| e.0 == self).map_or("?", |e| match dialect {
            Dialect::Phase3 => e.1 .0,
            Dialect::Phase2 => e.2 .0,
        })
    }
}

/// A ROSE operation or error code (X.880 `Code`): CSTA uses local integers only, but a peer may
/// send a global OID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    Local(i64),
    /// OBJECT IDENTIFIER content octets.
    Global(bytes::Bytes),
}

impl Code {
    pub fn local(&self) -> Option<i64> {
        match self {
            Code::Local(c) => Some(*c),
            Code::Global(_) => None,
        }
    }

    /// The operation this code names in `dialect`.
    pub fn operation(&self, dialect: Dialect) -> Option<Operation> {
        self.local().and_then(|c| Operation::from_code(c, dialect))
    }

    /// ECMA name, or `op<N>` for an unknown local code, or `global:<oid>`.
    pub fn name(&self, dialect: Dialect) -> String {
        match self {
            Code::Local(c) => match Operation::from_code(*c, dialect) {
                Some(op) => op.name(dialect).to_owned(),
                None => format!("op{c}"),
            },
            Code::Global(oid) => format!("global:{}", super::ber::oid_to_string(oid).unwrap_or_default()),
        }
    }
}
