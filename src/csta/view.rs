//! `cstagate decode`: an admin's view of a PBX trace, one line per APDU, readable or JSON.
//!
//! The JSON object of an APDU has `n`, `dir`, `kind`, `invoke_id`, `operation` (ECMA name or
//! `op<N>`), `opcode`, `event`, `xref` (hex), `call_id` (hex), `fields` (the members of the
//! argument, result or event body by ECMA name: devices as digits, connections as
//! `{call, device, dynamic}`, enumerations as numbers), named `cause` and `local_state`, and
//! `error` (`{reason, offset}`) for an APDU that does not decode.
//!
//! CSTA XML messages get the same object: a `MakeCall` document has the keys of a BER makeCall
//! invoke, by the Phase III names (ECMA-323 is its XML form), plus `element` (the root element's
//! name). What differs is only what the wire differs in: call, cross-reference and other ids are
//! text in XML and are shown as that text (in BER they are octets, shown as hex), and `raw` is
//! the XML kept verbatim. ECMA-354 session messages are `kind: "session"` with `operation` (the
//! element name), `session_id`, `user` and `has_password` (never the password) and `fields` by
//! element name; documents the codec does not know are `kind: "unknown"` with their `operation`
//! and `length` only (their text may be a vendor login). Error offsets of XML frames count from
//! the invoke-id digits (just after the 4-byte `00 00 LL LL`), or from the document without them.

use bytes::Bytes;
use serde_json::{json, Map, Value as Json};

use crate::capture::CapturedFrame;
use crate::codec::acse::{diagnostic_name, result_name, Authentication, UserInformation};
use crate::codec::apdu::{ErrorParameter, Event};
use crate::codec::body::{Body, FieldName, Value};
use crate::codec::framing::Framing;
use crate::codec::values::{ConnectionId, DeviceId, DeviceIdentifier, DeviceRef, Dialect, LocalDevice};
use crate::codec::xml::{AppSession, XmlMessage};
use crate::codec::{names, Apdu, Argument, DecodeError};

/// What one frame of a trace decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A BER APDU (ROSE or ACSE).
    Ber(Apdu),
    /// A CSTA XML message.
    Xml(XmlMessage),
}

/// Decode one framed APDU or XML message, in the framing the reader found it in if it knows
/// (`frame.framing`), else in `framing`. XML frames are read with the Phase III tables whatever
/// `dialect` says.
pub fn decode_frame(frame: &CapturedFrame, framing: Framing, dialect: Dialect) -> Result<Decoded, DecodeError> {
    let framed = frame.framed.clone()?;
    let framing = frame.framing.unwrap_or(framing);
    let inner = crate::capture::unframe(framing, &framed)?;
    // Offsets in errors count from the start of the APDU, after the frame header.
    if framing.is_xml() {
        XmlMessage::decode(&inner, framing).map(Decoded::Xml)
    } else {
        Apdu::decode(&inner, dialect).map(Decoded::Ber)
    }
}

/// The JSON object for one APDU or XML message (see the module docs).
pub fn to_json(n: usize, frame: &CapturedFrame, result: &Result<Decoded, DecodeError>, dialect: Dialect) -> Json {
    let mut o = Map::new();
    o.insert("n".into(), json!(n));
    if let Some(d) = frame.dir {
        o.insert("dir".into(), json!(d));
    }
    match result {
        Err(e) => {
            o.insert("error".into(), json!({"reason": e.to_string(), "offset": e.offset}));
        }
        Ok(Decoded::Ber(apdu)) => describe(apdu, dialect, &mut o),
        Ok(Decoded::Xml(m)) => describe_xml(m, &mut o),
    }
    Json::Object(o)
}

/// How the wire carried the octet strings of a message: ids are shown as hex for BER, as the
/// text they were for XML (hex only if that text is not UTF-8, which the XML codec refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Ber,
    Xml,
}

impl Wire {
    fn octets(self, b: &Bytes) -> Json {
        match (self, std::str::from_utf8(b)) {
            (Wire::Xml, Ok(t)) => json!(t),
            _ => json!(hex::encode(b)),
        }
    }
}

/// Fill `o` with the description of a CSTA XML message (see the module docs).
pub fn describe_xml(m: &XmlMessage, o: &mut Map<String, Json>) {
    match m {
        XmlMessage::Csta(apdu) => describe_on(apdu, Dialect::Phase3, Wire::Xml, o),
        XmlMessage::Session { invoke_id, msg } => {
            o.insert("kind".into(), json!("session"));
            if let Some(id) = invoke_id {
                o.insert("invoke_id".into(), json!(id));
            }
            o.insert("operation".into(), json!(msg.name()));
            describe_session(msg, o);
        }
        XmlMessage::Unknown { invoke_id, name, raw } => {
            o.insert("kind".into(), json!("unknown"));
            if let Some(id) = invoke_id {
                o.insert("invoke_id".into(), json!(id));
            }
            o.insert("operation".into(), json!(name));
            o.insert("length".into(), json!(raw.len()));
        }
    }
    o.insert("element".into(), json!(m.name()));
}

/// The members of an ECMA-354 message by element name; the login as `user` and `has_password`.
fn describe_session(msg: &AppSession, o: &mut Map<String, Json>) {
    let mut f = Map::new();
    let mut put = |k: &str, v: Json| {
        f.insert(k.to_owned(), v);
    };
    let mut session_id = None;
    match msg {
        AppSession::Start(s) => {
            put("applicationID", json!(s.application_id));
            put("requestedProtocolVersions", json!(s.protocol_versions));
            if let Some(d) = s.duration {
                put("requestedSessionDuration", json!(d));
            }
            if let Some(l) = &s.login {
                // Never the password: only whether there is one.
                o.insert("user".into(), json!(l.user));
                o.insert("has_password".into(), json!(!l.password.expose().is_empty()));
            }
        }
        AppSession::StartPos { session_id: id, protocol_version, duration } => {
            session_id = Some(id.clone());
            if let Some(v) = protocol_version {
                put("actualProtocolVersion", json!(v));
            }
            if let Some(d) = duration {
                put("actualSessionDuration", json!(d));
            }
        }
        AppSession::StartNeg { error } | AppSession::ResetTimerNeg { error } | AppSession::StopNeg { error } => put("errorCode", json!(error)),
        AppSession::ResetTimer { session_id: id, duration } => {
            session_id = Some(id.clone());
            if let Some(d) = duration {
                put("requestedSessionDuration", json!(d));
            }
        }
        AppSession::ResetTimerPos { duration } => {
            if let Some(d) = duration {
                put("actualSessionDuration", json!(d));
            }
        }
        AppSession::Stop { session_id: id } => session_id = Some(id.clone()),
        AppSession::StopPos => {}
        AppSession::Terminated { session_id: id, reason } => {
            session_id = id.clone();
            put("sessionTermReason", json!(reason));
        }
    }
    if let Some(id) = session_id {
        f.insert("sessionID".into(), json!(id));
        o.insert("session_id".into(), json!(id));
    }
    o.insert("fields".into(), Json::Object(f));
}


/// The decode view of one event report received on a monitor (no invoke id: it is the link's
/// business), as `cstagate probe` and the API's server-sent events show it.
pub fn event_json(report: &crate::codec::EventReport, dialect: Dialect) -> Map<String, Json> {
    let mut o = Map::new();
    describe(&Apdu::event(0, report.clone()), dialect, &mut o);
    o.remove("invoke_id");
    o
}

/// Fill `o` with the description of a decoded BER APDU.
pub fn describe(apdu: &Apdu, d: Dialect, o: &mut Map<String, Json>) {
    describe_on(apdu, d, Wire::Ber, o);
}

fn describe_on(apdu: &Apdu, d: Dialect, w: Wire, o: &mut Map<String, Json>) {
    o.insert("kind".into(), json!(apdu.kind_name()));
    if let Some(id) = apdu.invoke_id() {
        o.insert("invoke_id".into(), json!(id));
    }
    let body_of = |op_name: String, code: Option<i64>, arg: &Argument, o: &mut Map<String, Json>| {
        o.insert("operation".into(), json!(op_name));
        if let Some(c) = code {
            o.insert("opcode".into(), json!(c));
        }
        match arg {
            Argument::Body(b) => describe_body(b, w, o),
            Argument::Event(ev) => {
                o.insert("xref".into(), w.octets(&ev.xref));
                match &ev.event {
                    Event::Call { kind, body } => {
                        o.insert("event".into(), json!(kind.name()));
                        describe_body(body, w, o);
                    }
                    Event::Other { group, alternative, raw } => {
                        o.insert("event".into(), json!("other"));
                        o.insert("event_group".into(), json!(group));
                        o.insert("event_alternative".into(), json!(alternative));
                        o.insert("raw".into(), w.octets(raw));
                    }
                }
            }
            Argument::Opaque(b) => {
                o.insert("raw".into(), w.octets(b));
            }
            Argument::Absent => {}
        }
    };
    match apdu {
        Apdu::Invoke(i) => body_of(i.op.name(d), i.op.code(d).ok().and_then(|c| c.local()), &i.argument, o),
        Apdu::Result(r) => {
            if let Some((op, arg)) = &r.result {
                body_of(op.name(d), op.code(d).ok().and_then(|c| c.local()), arg, o);
            }
        }
        Apdu::Error(e) => {
            o.insert("opcode".into(), json!(e.code.local()));
            match &e.parameter {
                Some(ErrorParameter::UniversalFailure(u)) => {
                    o.insert(
                        "failure".into(),
                        json!({
                            "category": u.category.name(),
                            "value": u.value,
                            "name": u.value.and_then(|v| names::universal_failure(u.category, v)),
                        }),
                    );
                }
                Some(ErrorParameter::Opaque(b)) => {
                    o.insert("raw".into(), w.octets(b));
                }
                None => {}
            }
        }
        Apdu::Reject(r) => {
            let kind = ["general", "invoke", "returnResult", "returnError"][usize::from(r.problem.tag_number())];
            o.insert("problem".into(), json!({"kind": kind, "value": r.problem.value(), "name": names::reject_problem(r.problem)}));
        }
        Apdu::Aarq(b) | Apdu::Aare(b) | Apdu::Rlrq(b) | Apdu::Rlre(b) | Apdu::Abrt(b) => describe_acse(b, o),
    }
}

fn describe_acse(b: &Body, o: &mut Map<String, Json>) {
    for f in &b.fields {
        match (&f.name, &f.value) {
            (FieldName::ApplicationContextName, Value::Oid(c)) => {
                o.insert("context".into(), json!(crate::codec::ber::oid_to_string(c)));
            }
            (FieldName::Result, Value::Int(r)) => {
                o.insert("result".into(), json!(r));
                o.insert("result_name".into(), json!(result_name(r)));
            }
            (FieldName::ResultSourceDiagnostic, Value::Diagnostic { source, value }) => {
                o.insert("diagnostic".into(), json!([source, value]));
                o.insert("diagnostic_name".into(), json!(diagnostic_name(&Some((*source, *value)))));
            }
            (FieldName::CallingAuthenticationValue, Value::Auth(a)) => {
                // Never the password: only whether there is one.
                o.insert("user".into(), json!(a.user().map(|u| String::from_utf8_lossy(u).into_owned())));
                o.insert("has_password".into(), json!(!matches!(a, Authentication::Opaque(_))));
            }
            (FieldName::UserInformation, Value::UserInfo(UserInformation::Csta(u))) => {
                o.insert("csta_versions".into(), json!(u.versions()));
            }
            (FieldName::Reason, Value::Int(r)) => {
                o.insert("reason".into(), json!(r));
            }
            (FieldName::AbortSource, Value::Int(s)) => {
                o.insert("source".into(), json!(s));
            }
            _ => {}
        }
    }
}

/// Project a body's members into `fields`, plus the convenience keys `call_id`, `cause`,
/// `local_state`.
fn describe_body(b: &Body, w: Wire, o: &mut Map<String, Json>) {
    if let Some(c) = b.first_connection().and_then(|c| c.call.as_ref()) {
        o.insert("call_id".into(), w.octets(c));
    }
    if let Some(c) = b.int(FieldName::Cause) {
        o.insert("cause".into(), json!(names::event_cause(c).map_or_else(|| c.to_string(), str::to_owned)));
    }
    if let Some(s) = b.int(FieldName::LocalConnectionInfo) {
        o.insert("local_state".into(), json!(names::local_connection_state(s)));
    }
    if let Some(s) = b.int(FieldName::SystemStatus) {
        o.insert("system_status".into(), json!(names::system_status(s)));
    }
    o.insert("fields".into(), Json::Object(fields_on(b, w)));
}

/// The members of a body by ECMA name, each projected to JSON (see the module docs); members
/// without a scalar meaning (extensions, filters, lists, unknown members) are left out.
pub fn project_fields(b: &Body) -> Map<String, Json> {
    fields_on(b, Wire::Ber)
}

fn fields_on(b: &Body, w: Wire) -> Map<String, Json> {
    let mut m = Map::new();
    for f in &b.fields {
        if f.name == FieldName::Unknown {
            continue;
        }
        if let Some(v) = value_on(&f.value, w) {
            m.entry(f.name.as_str().to_owned()).or_insert(v);
        }
    }
    m
}

pub fn project_value(v: &Value) -> Option<Json> {
    value_on(v, Wire::Ber)
}

fn value_on(v: &Value, w: Wire) -> Option<Json> {
    Some(match v {
        Value::Connection(c) => project_connection(c, w),
        Value::Device(d) => project_device_ref(d, w),
        Value::DeviceId(d) => project_device(d, w),
        Value::Int(i) => json!(i),
        Value::Octets(b) => w.octets(b),
        Value::Text(t) => json!(t.as_str()),
        _ => return None,
    })
}

fn project_device(d: &DeviceId, w: Wire) -> Json {
    match &d.ident {
        DeviceIdentifier::Other(b) => w.octets(b),
        other => json!(other.digits()),
    }
}

fn project_device_ref(d: &DeviceRef, w: Wire) -> Json {
    match d {
        DeviceRef::Id(id) => project_device(id, w),
        other => json!(other.absent_name()),
    }
}

fn project_connection(c: &ConnectionId, w: Wire) -> Json {
    let (device, dynamic) = match &c.device {
        Some(LocalDevice::Static(d)) => (project_device(d, w), Json::Null),
        Some(LocalDevice::Dynamic(b)) => (Json::Null, w.octets(b)),
        None => (Json::Null, Json::Null),
    };
    json!({"call": c.call.as_ref().map(|b| w.octets(b)), "device": device, "dynamic": dynamic})
}

/// One readable line for an APDU.
pub fn to_line(j: &Json) -> String {
    let g = |k: &str| j.get(k).filter(|v| !v.is_null());
    let mut s = format!("#{}", g("n").map_or(String::new(), ToString::to_string));
    if let Some(d) = g("dir").and_then(Json::as_str) {
        s.push(' ');
        s.push_str(d);
    }
    if let Some(e) = g("error") {
        s.push_str(&format!(" ERROR {} ", e["reason"].as_str().unwrap_or("")));
        return s;
    }
    for k in ["kind", "operation", "event"] {
        if let Some(v) = g(k).and_then(Json::as_str) {
            s.push(' ');
            s.push_str(v);
        }
    }
    if let Some(id) = g("invoke_id") {
        s.push_str(&format!(" id={id}"));
    }
    for k in ["xref", "session_id", "context", "user", "result_name", "diagnostic_name", "cause", "local_state", "system_status"] {
        if let Some(v) = g(k) {
            s.push_str(&format!(" {k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
        }
    }
    if let Some(f) = g("failure") {
        s.push_str(&format!(" failure={}/{}", f["category"].as_str().unwrap_or(""), f["name"].as_str().map_or_else(|| f["value"].to_string(), str::to_owned)));
    }
    if let Some(p) = g("problem") {
        s.push_str(&format!(" problem={}/{}", p["kind"].as_str().unwrap_or(""), p["name"].as_str().map_or_else(|| p["value"].to_string(), str::to_owned)));
    }
    if let Some(Json::Object(fields)) = g("fields") {
        for (k, v) in fields {
            if matches!(k.as_str(), "cause" | "localConnectionInfo" | "systemStatus") {
                continue;
            }
            let shown = match v {
                Json::Object(c) => {
                    let part = |k: &str| c.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
                    format!("{}/{}{}", part("call"), part("device"), part("dynamic"))
                }
                Json::String(t) => t.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!(" {k}={shown}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(doc: &str) -> Json {
        let m = XmlMessage::decode(&Bytes::from(format!("0007{doc}")), Framing::XmlHeader).expect("decodes");
        let mut o = Map::new();
        describe_xml(&m, &mut o);
        Json::Object(o)
    }

    #[test]
    fn unknown_documents_show_their_name_not_their_text() {
        let j = view("<SystemRegister><requestTypes><userPassword>pw-1234</userPassword></requestTypes></SystemRegister>");
        assert_eq!((j["kind"].as_str(), j["operation"].as_str(), j["invoke_id"].as_i64()), (Some("unknown"), Some("SystemRegister"), Some(7)));
        assert!(j["length"].as_u64().is_some_and(|n| n > 50) && !j.to_string().contains("pw-1234"), "{j}");
    }

    #[test]
    fn a_session_login_shows_the_user_and_whether_there_is_a_password() {
        let j = view("<StartApplicationSession><applicationInfo><applicationID>a</applicationID><applicationSpecificInfo><user>u1</user><password>pw-1234</password></applicationSpecificInfo></applicationInfo></StartApplicationSession>");
        assert_eq!((j["kind"].as_str(), j["user"].as_str(), j["has_password"].as_bool()), (Some("session"), Some("u1"), Some(true)));
        assert!(!j.to_string().contains("pw-1234"), "{j}");
        let j = view("<StartApplicationSessionNegResponse><errorCode><definedError>invalidApplicationInfo</definedError></errorCode></StartApplicationSessionNegResponse>");
        assert_eq!(j["fields"]["errorCode"], "invalidApplicationInfo");
        assert!(to_line(&j).contains("errorCode=invalidApplicationInfo"), "{}", to_line(&j));
    }
}
