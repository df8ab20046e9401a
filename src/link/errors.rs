//! Why a request failed ([`RequestError`]) and why one could not be encoded ([`EncodeProblem`]):
//! the errors every caller of the link sees, whichever layer (handle, driver, session) produced them.

use crate::codec::apdu::{EncodeError, UniversalFailure};
use crate::codec::{Code, Dialect, ErrorKind, Operation, RejectProblem};

/// Why a request did not get a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("link down")]
    LinkDown,
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("request queue full")]
    QueueFull,
    #[error("rejected by the PBX ({0:?})")]
    Rejected(RejectProblem),
    #[error("CSTA error {}", failure_name(.0))]
    Failure(UniversalFailure),
    /// A ReturnError other than CSTA's universalFailure: the PBX's error code.
    #[error("PBX returned error code {}", code_name(.0))]
    OtherError(Code),
    /// A MonitorStart result without the crossRefIdentifier its events will carry.
    #[error("MonitorStart result without crossRefIdentifier")]
    NoCrossRef,
    #[error("cannot encode the request for this PBX: {0}")]
    Encode(EncodeProblem),
    /// The PBX answered (its result or error carried our invoke id) with a body that does not
    /// decode: a PBX whose wire form we do not know. `offset` is from the start of the APDU, as
    /// `cstagate decode` counts, so the byte can be found in a trace.
    #[error("the PBX's answer to {} does not decode: {reason} at byte {offset}", .operation.name(Dialect::Phase3))]
    Decode { operation: Operation, offset: usize, reason: ErrorKind },
    #[error("link closed")]
    Closed,
}

/// Why a request of ours could not be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeProblem {
    #[error("{0}")]
    Apdu(EncodeError),
    #[error("an APDU of {0} bytes is over the framing's limit")]
    TooLarge(usize),
    #[error("device number is not ASCII")]
    DeviceNotAscii,
    #[error("{0}")]
    Xml(crate::codec::xml::XmlEncodeError),
}

fn code_name(c: &Code) -> String {
    match c {
        Code::Local(n) => n.to_string(),
        Code::Global(_) => c.name(Dialect::Phase3),
    }
}

fn failure_name(u: &UniversalFailure) -> String {
    let name = u.value.and_then(|v| crate::codec::names::universal_failure(u.category, v));
    format!("{}/{}", u.category.name(), name.map_or_else(|| format!("{:?}", u.value), str::to_owned))
}
