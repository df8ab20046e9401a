//! The typed CSTA service layer: the one place that builds the requests the gateway, the API, the
//! probe and the simulator send, reads the results and events they get back, and shows APDUs
//! as JSON ([`view`], `cstagate decode`).
//!
//! Above this layer nothing handles a [`Body`] field by field: a MakeCall is
//! [`make_call`]`(from, to)`, its result is [`made_call`]`(&body) -> Option<CallId>`, an event is
//! [`call_event`]`(kind, &body) -> Option<CallEvent>`. The PBX's call id is turned into a
//! [`CallId`] once, when it comes off the wire, and back into bytes only when it goes onto it
//! (modelled on rustls' `msgs`: typed messages, typed errors, one codec below them).

pub mod view;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::codec::ber::Ia5;
use crate::codec::body::{FieldName as F, Value};
use crate::codec::{Body, ConnectionId, DeviceId, EventKind, LocalDevice};

/// The PBX's identifier of a call (ECMA-269 `CallID`: opaque octets). Shown, stored and taken
/// from users as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(Bytes);

impl CallId {
    pub fn new(b: impl Into<Bytes>) -> CallId {
        CallId(b.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The octets for the wire (a cheap clone).
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<Vec<u8>> for CallId {
    fn from(v: Vec<u8>) -> CallId {
        CallId(v.into())
    }
}

impl From<&[u8]> for CallId {
    fn from(v: &[u8]) -> CallId {
        CallId(Bytes::copy_from_slice(v))
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

/// A call id that is not hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a call id is an even number of hex digits")]
pub struct InvalidCallId;

impl FromStr for CallId {
    type Err = InvalidCallId;
    fn from_str(s: &str) -> Result<CallId, InvalidCallId> {
        hex::decode(s).map(CallId::from).map_err(|_| InvalidCallId)
    }
}

impl serde::Serialize for CallId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CallId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CallId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a request could not be built: what it names cannot go on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("the device number is not ASCII digits")]
    BadNumber,
    #[error("the digits to send are not ASCII")]
    BadDigits,
}

fn device(number: &str) -> Result<DeviceId, BuildError> {
    DeviceId::dialing(number).map_err(|_| BuildError::BadNumber)
}

/// The connection of `extension` in `call`, as ClearConnection and GenerateDigits name it.
fn connection(call: &CallId, extension: &str) -> Value {
    Value::Connection(ConnectionId { call: Some(call.bytes()), device: DeviceId::dialing(extension).ok().map(LocalDevice::Static) })
}

/// MakeCall argument: `from` calls `to`.
pub fn make_call(from: &str, to: &str) -> Result<Body, BuildError> {
    Ok(Body::new().with(F::CallingDevice, Value::DeviceId(device(from)?)).with(F::CalledDirectoryNumber, Value::DeviceId(device(to)?)))
}

/// ClearConnection argument: `extension` leaves `call`.
pub fn clear_connection(call: &CallId, extension: &str) -> Body {
    Body::new().with(F::ConnectionToBeCleared, connection(call, extension))
}

/// GenerateDigits (Phase II: SendDTMFTones) argument: DTMF on `extension`'s connection of `call`.
pub fn generate_digits(call: &CallId, extension: &str, digits: &str) -> Result<Body, BuildError> {
    let chars = Ia5::try_from(digits).map_err(|_| BuildError::BadDigits)?;
    Ok(Body::new().with(F::ConnectionToSendDigits, connection(call, extension)).with(F::CharactersToSend, Value::Text(chars)))
}

/// MonitorStart argument: monitor `device`.
pub fn monitor_start(device_number: &str) -> Result<Body, BuildError> {
    Ok(Body::new().with(F::MonitorObject, Value::DeviceId(device(device_number)?)))
}

/// The call a MakeCall result names (the calling device's connection), if it names one.
pub fn made_call(result: &Body) -> Option<CallId> {
    result.connection(F::CallingDevice).and_then(|c| c.call.clone()).map(CallId)
}

/// The PBX's side (the simulator): what a MakeCall argument asks, `(from, to)` as digits.
pub fn make_call_args(arg: &Body) -> Option<(String, String)> {
    Some((arg.digits(F::CallingDevice)?, arg.digits(F::CalledDirectoryNumber)?))
}

/// The PBX's side: the MakeCall result naming `call` as `from`'s connection (what
/// [`made_call`] reads).
pub fn make_call_result(call: &CallId, from: &str) -> Body {
    Body::new().with(F::CallingDevice, connection(call, from))
}

/// The PBX's side: the call a ClearConnection argument names.
pub fn cleared_call(arg: &Body) -> Option<CallId> {
    arg.connection(F::ConnectionToBeCleared).and_then(|c| c.call.clone()).map(CallId)
}

/// The PBX's side: the call a GenerateDigits argument names.
pub fn digits_call(arg: &Body) -> Option<CallId> {
    arg.connection(F::ConnectionToSendDigits).and_then(|c| c.call.clone()).map(CallId)
}

/// The call events the engine follows, reduced from CSTA events by [`call_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// ServiceInitiated: the phone is prompted (rings) for the call.
    Initiated { call: CallId },
    /// Originated: the user picked up; the call goes out.
    Originated { call: CallId },
    /// Delivered / NetworkReached: the far end (the IVR) is being reached.
    Delivered { call: CallId },
    /// Established: the far end answered.
    Established { call: CallId },
    /// Failed, with the CSTA event cause.
    Failed { call: CallId, cause: Option<i64> },
    /// ConnectionCleared / CallCleared.
    Cleared { call: CallId },
    /// Diverted / Transferred / Conferenced: the call no longer joins the extension and the IVR
    /// alone.
    Diverted { call: CallId },
}

impl CallEvent {
    pub fn call(&self) -> &CallId {
        match self {
            CallEvent::Initiated { call } | CallEvent::Originated { call } | CallEvent::Delivered { call } | CallEvent::Established { call } | CallEvent::Failed { call, .. } | CallEvent::Cleared { call } | CallEvent::Diverted { call } => call,
        }
    }
}

/// Reduce a CSTA event to what the engine follows (`None`: an event it does not follow, or one
/// that names no call).
pub fn call_event(kind: EventKind, body: &Body) -> Option<CallEvent> {
    let call = CallId(body.first_connection()?.call.clone()?);
    Some(match kind {
        EventKind::ServiceInitiated => CallEvent::Initiated { call },
        EventKind::Originated => CallEvent::Originated { call },
        EventKind::Delivered | EventKind::NetworkReached => CallEvent::Delivered { call },
        EventKind::Established => CallEvent::Established { call },
        EventKind::Failed => CallEvent::Failed { call, cause: body.int(F::Cause) },
        EventKind::ConnectionCleared | EventKind::CallCleared => CallEvent::Cleared { call },
        EventKind::Diverted | EventKind::Transferred | EventKind::Conferenced => CallEvent::Diverted { call },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_hex_both_ways_and_in_json() {
        let c = CallId::from(vec![0x2b, 0x01]);
        assert_eq!(c.to_string(), "2b01");
        assert_eq!("2b01".parse::<CallId>(), Ok(c.clone()));
        assert_eq!("2b0".parse::<CallId>(), Err(InvalidCallId));
        assert_eq!(serde_json::to_string(&c).ok().as_deref(), Some("\"2b01\""));
        assert_eq!(serde_json::from_str::<CallId>("\"2b01\"").ok(), Some(c));
    }

    #[test]
    fn a_make_call_result_names_the_calling_connection() {
        let body = Body::new().with(F::CallingDevice, connection(&CallId::from(vec![7]), "2005"));
        assert_eq!(made_call(&body), Some(CallId::from(vec![7])));
        assert_eq!(made_call(&Body::new()), None);
        assert_eq!(make_call("2005", "0800").map(|b| b.digits(F::CalledDirectoryNumber)), Ok(Some("0800".into())));
        assert_eq!(make_call("2005", "08é").err(), Some(BuildError::BadNumber));
        let call = CallId::from(vec![1, 2]);
        assert_eq!(made_call(&make_call_result(&call, "2005")), Some(call.clone()));
        assert_eq!(cleared_call(&clear_connection(&call, "2005")), Some(call.clone()));
        assert_eq!(generate_digits(&call, "2005", "*12#").ok().and_then(|b| digits_call(&b)), Some(call));
        assert_eq!(make_call("2005", "0800").ok().and_then(|b| make_call_args(&b)), Some(("2005".into(), "0800".into())));
    }
}
